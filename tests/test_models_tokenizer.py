"""The offline BPE behind the random models: deterministic, cached, and real-BPE-like on
class names (several tokens each, shared prefixes)."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from vlmclf.models.random_tokenizer import (
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    base_bpe_json,
    build_tokenizer,
    load_or_train_bpe,
    train_bpe,
    training_corpus,
)


def _class_names() -> list[str]:
    folder = resources.files("vlmclf.data").joinpath("classnames")
    names: list[str] = []
    for file_name in ("imagenet.json", "flowers102.json", "stanford_cars.json"):
        names.extend(json.loads(folder.joinpath(file_name).read_text(encoding="utf-8")))
    return sorted(set(names))


@pytest.fixture(scope="module")
def llama():
    return build_tokenizer("llama")


def test_training_is_deterministic_and_matches_the_cached_vocabulary():
    fresh = train_bpe(training_corpus()).to_str()
    assert fresh == train_bpe(training_corpus()).to_str()
    assert fresh == base_bpe_json()


def test_disk_cache_is_written_once_and_read_back(tmp_path):
    text = load_or_train_bpe(tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].read_text(encoding="utf-8") == text
    files[0].write_text(text + "\n", encoding="utf-8")  # marks the file: a read returns it
    assert load_or_train_bpe(tmp_path) == text + "\n"
    assert load_or_train_bpe(None) == text


def test_vocabulary_size_and_atomic_special_tokens(llama):
    assert len(llama) == VOCAB_SIZE
    for token in SPECIAL_TOKENS:
        assert llama(token, add_special_tokens=False)["input_ids"] == [
            llama.convert_tokens_to_ids(token)
        ]
    ids = llama("<|im_start|>user", add_special_tokens=False)["input_ids"]
    assert ids[0] == llama.convert_tokens_to_ids("<|im_start|>") and len(ids) >= 2


def test_class_names_are_multi_token_with_shared_prefixes(llama):
    names = _class_names()
    tokens = {name: llama(" " + name, add_special_tokens=False)["input_ids"] for name in names}
    multi = sum(len(ids) >= 2 for ids in tokens.values())
    assert multi / len(names) > 0.95
    first_tokens = {ids[0] for ids in tokens.values()}
    assert len(first_tokens) < len(names) / 4  # a trie over these names branches
    tiger = llama(" tiger", add_special_tokens=False)["input_ids"]
    shark = tokens["tiger shark"]
    lily = tokens["tiger lily"]
    assert shark[: len(tiger)] == lily[: len(tiger)] == tiger and shark != lily


def test_decoding_inverts_encoding(llama):
    text = "a photo of a 2012 Aston Martin V8 Vantage Convertible."
    assert llama.decode(llama(text)["input_ids"], skip_special_tokens=True) == text


@pytest.mark.parametrize(
    ("profile", "first", "last"),
    [
        ("llama", "<s>", "."),
        ("qwen", "a", "."),
        ("clip", "<|startoftext|>", "<|endoftext|>"),
        ("siglip", "a", "</s>"),
        ("qformer", "<s>", "</s>"),
    ],
)
def test_profiles_frame_text_like_their_real_tokenizers(profile, first, last):
    tokenizer = build_tokenizer(profile)
    ids = tokenizer("a dog.")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert (tokens[0], tokens[-1]) == (first, last)
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
