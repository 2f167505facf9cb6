"""The class-name token trie: node sharing, the tree mask, positions, chunking and the gather
of per-node log-probs, checked against brute force."""

from __future__ import annotations

import random

import pytest
import torch

from vlmclf.methods.likelihood.trie import TokenTrie, chunk_sequences, node_log_probs

SEQUENCES = [(5, 6, 7), (5, 6, 8), (5,), (9, 1), (5, 6, 7), (5, 6, 7, 2), (3,)]


def brute_ancestors(trie: TokenTrie) -> torch.Tensor:
    count = trie.num_nodes
    out = torch.zeros(count, count, dtype=torch.bool)
    for i in range(count):
        node = i
        while node >= 0:
            out[i, node] = True
            node = trie.parents[node]
    return out


def test_build_shares_prefixes_and_keeps_duplicates_and_prefix_names():
    trie = TokenTrie.build(SEQUENCES)
    # distinct prefixes: 5, 56, 567, 568, 9, 91, 5672, 3
    assert trie.num_nodes == 8
    assert trie.paths[0] == trie.paths[4]  # duplicate names share one path
    assert trie.paths[2] == trie.paths[0][:1]  # (5,) is a prefix of (5, 6, 7)
    assert trie.paths[5][:3] == trie.paths[0]
    for seq, path in zip(SEQUENCES, trie.paths, strict=True):
        assert [trie.tokens[n] for n in path] == list(seq)
        assert [trie.depths[n] for n in path] == list(range(len(seq)))
        assert trie.parents[path[0]] == -1
        assert all(trie.parents[b] == a for a, b in zip(path, path[1:], strict=False))
    assert all(trie.parents[n] < n for n in range(trie.num_nodes))


def test_nodes_with_children_are_exactly_the_parents():
    trie = TokenTrie.build(SEQUENCES)
    with_children = set(trie.nodes_with_children())
    assert with_children == {p for p in trie.parents if p >= 0}
    assert trie.paths[5][-1] not in with_children  # a leaf needs no logits


def test_empty_sequence_is_rejected():
    with pytest.raises(ValueError, match="at least one token"):
        TokenTrie.build([(1, 2), ()])


def test_ancestor_matrix_and_mask_match_brute_force():
    rng = random.Random(0)
    sequences = [tuple(rng.randint(0, 3) for _ in range(rng.randint(1, 6))) for _ in range(60)]
    trie = TokenTrie.build(sequences)
    ancestors = brute_ancestors(trie)
    assert torch.equal(trie.ancestor_matrix(), ancestors)
    prefix = 7
    mask = trie.attention_mask(prefix, torch.float32)
    assert mask.shape == (1, 1, trie.num_nodes, prefix + trie.num_nodes)
    visible = mask[0, 0] == 0
    assert visible[:, :prefix].all()  # every node sees the whole prompt
    assert torch.equal(visible[:, prefix:], ancestors)
    assert (mask[0, 0][~visible] == torch.finfo(torch.float32).min).all()
    assert trie.positions(prefix).tolist() == [prefix + d for d in trie.depths]


def test_node_log_probs_gathers_the_right_rows():
    trie = TokenTrie.build(SEQUENCES)
    vocab = 11
    torch.manual_seed(0)
    first = torch.log_softmax(torch.randn(2, vocab), -1)
    kept = trie.nodes_with_children()
    logits = torch.randn(2, len(kept), vocab)
    out = node_log_probs(trie, first, logits, kept)
    for b in range(2):
        for node in range(trie.num_nodes):
            parent, token = trie.parents[node], trie.tokens[node]
            want = (
                first[b, token]
                if parent < 0
                else torch.log_softmax(logits[b, kept.index(parent)], -1)[token]
            )
            assert out[b, node].item() == pytest.approx(want.item(), abs=1e-6)


@pytest.mark.parametrize("max_nodes", [1, 3, 5, 8, 100])
def test_chunks_cover_every_sequence_once_within_budget(max_nodes):
    rng = random.Random(1)
    sequences = [tuple(rng.randint(0, 4) for _ in range(rng.randint(1, 4))) for _ in range(40)]
    groups = chunk_sequences(sequences, max_nodes)
    assert sorted(i for g in groups for i in g) == list(range(len(sequences)))
    for group in groups:
        size = TokenTrie.build([sequences[i] for i in group]).num_nodes
        assert size <= max_nodes or len(group) == 1
    if max_nodes >= TokenTrie.build(sequences).num_nodes:
        assert len(groups) == 1


def test_chunks_keep_shared_prefixes_together():
    sequences = [(1, 2, 3), (9, 9), (1, 2, 4), (9, 8), (1, 2, 5)]
    groups = chunk_sequences(sequences, 5)
    by_group = [sorted(g) for g in groups]
    assert [0, 2, 4] in by_group  # 1-2-{3,4,5}: five nodes, one group
