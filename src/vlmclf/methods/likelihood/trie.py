"""A token trie of class names, laid out as one packed sequence for a single forward pass.

Every distinct token prefix of the class names becomes one node, so a prefix shared by many
names ("golden retriever", "golden eagle") is run through the model once. The nodes follow the
prompt in one sequence; the tree attention mask lets each node see the whole prompt and its own
ancestors only, and its position is ``prompt length + depth``. Under that mask and those positions
each node's hidden state equals the one it would have at the end of ``prompt + its prefix`` in
an ordinary causal pass, which is what makes the packed scores exact.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

TokenSequence = tuple[int, ...]


@dataclass(frozen=True)
class TokenTrie:
    """Nodes in creation order (a parent always comes before its children).

    ``paths[s]`` lists the node of every token of sequence ``s``; ``parents[n]`` is -1 for a
    first token (its distribution comes from the last prompt position).
    """

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    depths: tuple[int, ...]
    paths: tuple[tuple[int, ...], ...]

    @classmethod
    def build(cls, sequences: Sequence[TokenSequence]) -> TokenTrie:
        if any(len(seq) == 0 for seq in sequences):
            raise ValueError("every class name must have at least one token")
        index: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        paths: list[tuple[int, ...]] = []
        for seq in sequences:
            node, path = -1, []
            for depth, token in enumerate(seq):
                key = (node, int(token))
                if key not in index:
                    index[key] = len(tokens)
                    tokens.append(int(token))
                    parents.append(node)
                    depths.append(depth)
                node = index[key]
                path.append(node)
            paths.append(tuple(path))
        return cls(tuple(tokens), tuple(parents), tuple(depths), tuple(paths))

    @property
    def num_nodes(self) -> int:
        return len(self.tokens)

    def nodes_with_children(self) -> list[int]:
        """The nodes whose next-token distribution some name needs (the others need no logits)."""
        return sorted({p for p in self.parents if p >= 0})

    def ancestor_matrix(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Boolean (T, T): ``[i, j]`` is True when node j is node i or one of its ancestors."""
        count = self.num_nodes
        seen = torch.eye(count, dtype=torch.bool, device=device)
        parents = torch.tensor(self.parents, dtype=torch.long, device=device)
        depths = torch.tensor(self.depths, dtype=torch.long, device=device)
        for depth in range(1, int(depths.max().item()) + 1 if count else 0):
            rows = torch.nonzero(depths == depth).flatten()
            seen[rows] |= seen[parents[rows]]  # parents, one level up, are already complete
        return seen

    def attention_mask(
        self, prefix_length: int, dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Additive 4D mask (1, 1, T, prefix_length + T): 0 where attending, dtype-min elsewhere.

        Additive floats, not booleans, because eager attention adds the mask to the scores while
        SDPA accepts either form.
        """
        allowed = torch.ones(
            self.num_nodes, prefix_length + self.num_nodes, dtype=torch.bool, device=device
        )
        allowed[:, prefix_length:] = self.ancestor_matrix(device)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[None, None]

    def positions(self, prefix_length: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Position of every node: where its token would sit after the prompt, (T,) long."""
        return torch.tensor(self.depths, dtype=torch.long, device=device) + prefix_length


@functools.lru_cache(maxsize=128)
def cached_trie(sequences: tuple[TokenSequence, ...]) -> TokenTrie:
    """``TokenTrie.build`` once per distinct chunk of names: a class list's tries serve every
    image and every batch of a run (building them took ~6% of CPU scoring time per image)."""
    return TokenTrie.build(sequences)


def node_log_probs(
    trie: TokenTrie, first_log_probs: torch.Tensor, logits: torch.Tensor | None, kept: Sequence[int]
) -> torch.Tensor:
    """log p(node's token | prompt, ancestors) for every node, shape (B, T), float32.

    ``first_log_probs`` (B, V): log-softmax at the last prompt position. ``logits`` (B, K, V): the
    model's outputs at the ``kept`` nodes (those with children), in that order.
    """
    batch = first_log_probs.shape[0]
    device = first_log_probs.device
    tokens = torch.tensor(trie.tokens, dtype=torch.long, device=device)
    parents = torch.tensor(trie.parents, dtype=torch.long, device=device)
    out = torch.empty(batch, trie.num_nodes, dtype=torch.float32, device=device)
    roots = torch.nonzero(parents < 0).flatten()
    out[:, roots] = first_log_probs[:, tokens[roots]].float()
    inner = torch.nonzero(parents >= 0).flatten()
    if inner.numel():
        assert logits is not None, "nodes with parents need the parents' logits"
        row_of = torch.full((trie.num_nodes,), -1, dtype=torch.long, device=device)
        row_of[torch.tensor(list(kept), dtype=torch.long, device=device)] = torch.arange(
            len(kept), device=device
        )
        rows = row_of[parents[inner]]
        norm = torch.logsumexp(logits.float(), dim=-1)  # (B, K)
        picked = logits[:, rows, tokens[inner]].float()  # (B, n_inner)
        out[:, inner] = picked - norm[:, rows]
    return out


def chunk_sequences(sequences: Sequence[TokenSequence], max_nodes: int) -> list[list[int]]:
    """Group sequence indices so that each group's trie has at most ``max_nodes`` nodes.

    Sequences are taken in sorted token order, so names that share prefixes land in the same
    group and a prefix is repeated only where a group boundary cuts through it. In sorted order
    the nodes a sequence adds are its length minus its common prefix with the previous one.
    A single sequence longer than ``max_nodes`` gets a group of its own.
    """
    order = sorted(range(len(sequences)), key=lambda i: tuple(sequences[i]))
    groups: list[list[int]] = []
    size = 0
    previous: TokenSequence = ()
    for i in order:
        seq = tuple(sequences[i])
        added = len(seq) - _common_prefix(previous, seq)
        if groups and size + added <= max_nodes:
            groups[-1].append(i)
            size += added
        else:
            groups.append([i])
            size = len(seq)
        previous = seq
    return groups


def _common_prefix(a: TokenSequence, b: TokenSequence) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
