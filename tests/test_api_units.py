"""Small pieces of the API client: prices, key hygiene, URLs, the cache file, letter scores."""

from __future__ import annotations

import math
import pickle

import pytest

from vlmclf.models.api import ApiAnswer, ApiFailure, PriceTable
from vlmclf.models.api.cache import ResponseCache, cache_key
from vlmclf.models.api.encoding import letter_logprobs
from vlmclf.models.api.keys import Secret, redact, strip_credentials
from vlmclf.models.api.prices import read_price_file


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-4o", (2.5, 10.0)),
    ("gpt-4o-2024-08-06", (2.5, 10.0)),
    ("gpt-4o-mini", (0.15, 0.6)),
    ("gpt-4o-mini-2024-07-18", (0.15, 0.6)),
    ("claude-3-5-sonnet-20241022", (3.0, 15.0)),
    ("claude-3-opus-latest", (15.0, 75.0)),
    ("models/gemini-1.5-pro-002", (1.25, 5.0)),
    ("gemini-2.0-flash", (0.1, 0.4)),
])
def test_default_prices_resolve_snapshots(model, expected):
    price = PriceTable.default().lookup(model)
    assert price is not None and (price.input_per_m, price.output_per_m) == expected


@pytest.mark.parametrize("model", ["gpt-4.1-mini", "llava-1.5-7b", "gemini-2.0-flash-lite"])
def test_other_models_have_no_price(model):
    assert PriceTable.default().lookup(model) is None


def test_price_file_overrides_and_extends(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text('{"gpt-4o": {"input": 1, "output": 2}, "my-vllm": {"input": 0, "output": 0}}')
    table = PriceTable.load(path)
    assert table.lookup("gpt-4o").cost(1_000_000, 500_000) == pytest.approx(2.0)
    assert table.lookup("my-vllm").cost(10, 10) == 0.0
    assert table.lookup("gpt-4o-mini").input_per_m == 0.15  # untouched defaults remain


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", r"prices\.json: line 1: not JSON"),
    ("[1, 2]", "expected an object"),
    ('{"m": {"input": 1}}', 'entry "m" must be'),
    ('{"m": {"input": -1, "output": 2}}', 'entry "m" field "input" must be a non-negative'),
    ('{"m": {"input": 1, "output": "2"}}', 'field "output"'),
])
def test_bad_price_files_name_file_and_field(tmp_path, content, message):
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_price_file(path)


def test_missing_price_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="nope.json: cannot read it"):
        read_price_file(tmp_path / "nope.json")


def test_secret_hides_itself_and_redaction_masks_it():
    secret = Secret("sk-unit-test-secret-123")
    assert "sk-unit" not in repr(secret) and "sk-unit" not in str(secret)
    assert redact("Bearer sk-unit-test-secret-123 failed") == "Bearer *** failed"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_strip_credentials():
    assert strip_credentials("https://user:pw@host.example:8443/v1/?key=abc#x") == \
        "https://host.example:8443/v1"
    assert strip_credentials("http://[::1]:8000/v1") == "http://[::1]:8000/v1"


def test_letter_logprobs_sums_spellings_and_leaves_absent_letters_none():
    top = [("A", math.log(0.5)), (" A", math.log(0.25)), ("b", math.log(0.1)), ("(C)", -3.0)]
    scores = letter_logprobs(top, ["A", "B", "C"])
    assert scores["A"] == pytest.approx(math.log(0.75))
    assert scores["B"] is None  # case matters: "b" is not "B"
    assert scores["C"] == -3.0


def test_cache_persists_and_keys_separate_parameters(tmp_path):
    path = tmp_path / "c.sqlite"
    key = cache_key("openai", "m", "http://h/v1", "abc", "q", {"max_tokens": 5})
    other = cache_key("openai", "m", "http://h/v1", "abc", "q", {"max_tokens": 6})
    assert key != other
    cache = ResponseCache(path)
    cache.put(key, "openai", "m", {"text": "hi"})
    cache.close()
    reopened = ResponseCache(path)
    assert reopened.get_many([key, other]) == {key: {"text": "hi"}}
    assert len(reopened) == 1


def test_unusable_cache_file_is_named(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="c.sqlite is not usable"):
        ResponseCache(path)


def test_answer_is_a_str_and_failure_is_not():
    answer = ApiAnswer("a cat", {"truncated": True})
    assert answer == "a cat" and answer.meta["truncated"]
    restored = pickle.loads(pickle.dumps(answer))
    assert restored == "a cat" and restored.meta == {"truncated": True}
    failure = ApiFailure("gave up", "retries_exhausted", 7)
    assert not isinstance(failure, str) and str(failure) == "gave up"
