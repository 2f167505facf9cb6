"""Injected faults: retries, Retry-After, timeouts, malformed and truncated answers, caps,
concurrency, the response cache and usage accounting. Nothing lost, nothing counted twice."""

from __future__ import annotations

import email.utils
import json
import time

import pytest
from api_servers import (
    CUT,
    EMPTY,
    INPUT_TOKENS,
    MALFORMED,
    FakeApiServer,
    fast_settings,
    make_images,
    sleep,
    status,
)

from vlmclf.models.api import ApiAnswer, ApiBudgetExceeded, ApiFailure, load_api_model
from vlmclf.models.api.transport import retry_after_seconds


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.setenv(name, "test-key")


def _model(server: FakeApiServer, tmp_path, **overrides):
    return load_api_model(f"{server.protocol}:test-model",
                          **fast_settings(server, tmp_path / "cache.sqlite", **overrides))


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
def test_429_waits_at_least_retry_after(protocol, tmp_path):
    with FakeApiServer(protocol, by_index={0: status(429, retry_after=0.3)}) as server:
        model = _model(server, tmp_path, concurrency=1)
        assert model.generate(make_images(1), ["q"], 5) == ["answer to q"]
    first, second = server.chat_requests
    assert second.started - first.started >= 0.3
    assert model.usage()["retries"] == 1 and model.usage()["requests"] == 2


def test_retry_after_as_http_date_and_milliseconds():
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_retry_after_beyond_the_limit_fails_the_item(tmp_path):
    with FakeApiServer("openai", always={"slow": status(429, retry_after=3600)}) as server:
        model = _model(server, tmp_path, max_retry_after_s=10)
        out = model.generate(make_images(2), ["slow", "fine"], 5)
    assert isinstance(out[0], ApiFailure) and "asked to wait 3600 s" in str(out[0])
    assert out[1] == "answer to fine"


def test_server_errors_then_success(tmp_path):
    faults = {"q1": [status(500), status(502), status(503), status(529)]}
    with FakeApiServer("anthropic", by_prompt=faults) as server:
        model = _model(server, tmp_path)
        out = model.generate(make_images(2), ["q0", "q1"], 5)
    assert out == ["answer to q0", "answer to q1"]
    assert out[1].meta["attempts"] == 5
    usage = model.usage()
    assert (usage["requests"], usage["retries"], usage["failures"]) == (6, 4, 0)
    assert usage["input_tokens"] == 2 * INPUT_TOKENS  # failed attempts report no usage


def test_timeout_then_success(tmp_path):
    with FakeApiServer("gemini", by_index={0: sleep(2.0)}) as server:
        model = _model(server, tmp_path, timeout_s=0.5, concurrency=1)
        out = model.generate(make_images(1), ["q"], 5)
    assert out == ["answer to q"] and out[0].meta["attempts"] == 2
    assert model.usage()["retries"] == 1


def test_cut_connection_is_retried(tmp_path):
    with FakeApiServer("openai", by_index={0: CUT}) as server:
        model = _model(server, tmp_path, concurrency=1)
        assert model.generate(make_images(1), ["q"], 5) == ["answer to q"]
    assert len(server.chat_requests) == 2


def test_malformed_json_then_success(tmp_path):
    with FakeApiServer("openai", by_prompt={"q": [MALFORMED, MALFORMED]}) as server:
        model = _model(server, tmp_path)
        assert model.generate(make_images(1), ["q"], 5) == ["answer to q"]
    usage = model.usage()
    assert (usage["malformed"], usage["retries"], usage["requests"]) == (2, 2, 3)


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
def test_malformed_forever_fails_that_item_only(protocol, tmp_path):
    questions = ["q0", "bad", "q2", "q3"]
    with FakeApiServer(protocol, always={"bad": MALFORMED}) as server:
        model = _model(server, tmp_path, max_retries=2)
        out = model.generate(make_images(4), questions, 5)
        assert [str(a) for a in out if isinstance(a, ApiAnswer)] == [
            "answer to q0", "answer to q2", "answer to q3"]
        failure = out[1]
        assert isinstance(failure, ApiFailure) and not isinstance(failure, str)
        assert failure.kind == "malformed" and failure.attempts == 3
        assert str(failure).startswith("gave up after 3 attempts: malformed response")
        assert sum(r.prompt == "bad" for r in server.chat_requests) == 3
        assert model.usage()["failures"] == 1
        again = _model(server, tmp_path, max_retries=0)  # failures are not cached: retried
        rerun = again.generate(make_images(4), questions, 5)
    assert [r.prompt for r in server.chat_requests[-1:]] == ["bad"] and len(
        server.chat_requests) == 7
    assert isinstance(rerun[1], ApiFailure) and again.usage()["cached_hits"] == 3


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
def test_truncated_answers_are_kept_and_flagged(protocol, tmp_path):
    with FakeApiServer(protocol, answer=lambda p: "one two three four five six") as server:
        model = _model(server, tmp_path)
        out = model.generate(make_images(2), ["short", "long"], 3)
    assert out == ["one two three", "one two three"]
    assert all(a.meta["truncated"] for a in out)
    assert model.usage()["truncated"] == 2


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
def test_empty_truncated_answer_is_a_failure(protocol, tmp_path):
    with FakeApiServer(protocol, always={"nothing": EMPTY}) as server:
        model = _model(server, tmp_path)
        out = model.generate(make_images(2), ["nothing", "fine"], 5)
    assert isinstance(out[0], ApiFailure) and out[0].kind == "empty"
    assert "empty answer" in str(out[0]) and "token limit" in str(out[0])
    assert out[1] == "answer to fine"
    assert sum(r.prompt == "nothing" for r in server.chat_requests) == 1  # not retried


def test_retries_exhausted_fails_the_item(tmp_path):
    with FakeApiServer("openai", always={"down": status(503)}) as server:
        model = _model(server, tmp_path, max_retries=3)
        out = model.generate(make_images(2), ["down", "up"], 5)
    assert isinstance(out[0], ApiFailure) and out[0].kind == "retries_exhausted"
    assert "gave up after 4 attempts: HTTP 503" in str(out[0])
    assert out[1] == "answer to up"


def test_client_errors_are_not_retried(tmp_path):
    with FakeApiServer("openai", always={"huge": status(400)}) as server:
        model = _model(server, tmp_path)
        out = model.generate(make_images(1), ["huge"], 5)
    assert isinstance(out[0], ApiFailure) and out[0].kind == "http_error"
    assert "HTTP 400" in str(out[0]) and len(server.chat_requests) == 1


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_bounds_requests_in_flight(concurrency, tmp_path):
    with FakeApiServer("openai", delay_s=0.15) as server:
        model = _model(server, tmp_path, concurrency=concurrency)
        out = model.generate(make_images(6), [f"q{i}" for i in range(6)], 5)
    assert len(out) == 6 and server.max_in_flight == concurrency


def test_response_cache_answers_a_second_run(tmp_path):
    questions = [f"q{i}" for i in range(4)]
    with FakeApiServer("openai") as server:
        first = _model(server, tmp_path)
        a = first.generate(make_images(4), questions, 5)
        second = _model(server, tmp_path)  # a fresh object on the same cache file
        b = second.generate(make_images(4), questions, 5)
        c = second.generate(make_images(4), questions, 9)  # other parameters: other answers
    assert a == b and len(server.chat_requests) == 8
    assert all(x.meta["cached"] for x in b) and not any(x.meta["cached"] for x in c)
    usage = second.usage()
    assert (usage["cached_hits"], usage["requests"], usage["answered"]) == (4, 4, 4)


def test_identical_items_in_a_batch_share_one_request(tmp_path):
    images = make_images(1) * 3
    with FakeApiServer("openai") as server:
        model = _model(server, tmp_path)
        out = model.generate(images, ["same"] * 3, 5)
    assert out == ["answer to same"] * 3 and len(server.chat_requests) == 1
    assert model.usage()["cached_hits"] == 2


def test_usage_and_cost_sum_over_answers(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text('{"test-model": {"input": 2.0, "output": 10.0}}')
    faults = {"q1": [status(500), MALFORMED]}
    with FakeApiServer("openai", by_prompt=faults) as server:
        model = _model(server, tmp_path, price_file=str(prices))
        out = model.generate(make_images(3), ["q0", "q1", "q2"], 5)
    usage = model.usage()
    output = sum(len(a.split()) for a in out)
    assert (usage["input_tokens"], usage["output_tokens"]) == (3 * INPUT_TOKENS, output)
    assert usage["estimated_cost_usd"] == pytest.approx((300 * 2.0 + output * 10.0) / 1e6)
    assert (usage["requests"], usage["retries"], usage["answered"]) == (5, 2, 3)


def test_unpriced_model_has_unknown_cost(tmp_path):
    with FakeApiServer("openai") as server:
        model = _model(server, tmp_path)
        model.generate(make_images(1), ["q"], 5)
        assert model.usage()["estimated_cost_usd"] is None
        with pytest.raises(ValueError, match="needs a price for test-model"):
            _model(server, tmp_path, max_cost_usd=1.0)


def test_request_cap_stops_after_storing_answers(tmp_path):
    questions = [f"q{i}" for i in range(5)]
    with FakeApiServer("openai") as server:
        model = _model(server, tmp_path, max_requests=3, concurrency=1)
        with pytest.raises(ApiBudgetExceeded, match="max_requests=3") as caught:
            model.generate(make_images(5), questions, 5)
        err = caught.value
        assert err.requests == 3 and err.max_requests == 3
        assert [r for r in err.results if r is not None] == [f"answer to q{i}" for i in range(3)]
        resumed = _model(server, tmp_path)
        out = resumed.generate(make_images(5), questions, 5)
    assert out == [f"answer to {q}" for q in questions]
    assert len(server.chat_requests) == 5  # nothing sent twice
    assert resumed.usage()["cached_hits"] == 3


def test_spend_cap(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text('{"test-model": {"input": 1000.0, "output": 0.0}}')  # $0.10 a request
    with FakeApiServer("anthropic") as server:
        model = _model(server, tmp_path, price_file=str(prices), max_cost_usd=0.25,
                       concurrency=1)
        with pytest.raises(ApiBudgetExceeded, match="spend cap") as caught:
            model.generate(make_images(5), [f"q{i}" for i in range(5)], 5)
    assert caught.value.cost_usd == pytest.approx(0.3)
    assert len(server.chat_requests) == 3


@pytest.mark.parametrize(("protocol", "body", "reason"), [
    ("openai", {"choices": [{"message": {"content": None, "refusal": "I can't help"},
                             "finish_reason": "stop"}]}, "the model refused: I can't help"),
    ("anthropic", {"content": [], "stop_reason": "refusal"}, "refused"),
    ("gemini", {"promptFeedback": {"blockReason": "SAFETY"}}, "prompt was blocked (SAFETY)"),
    ("gemini", {"candidates": [{"content": {"parts": []}, "finishReason": "SAFETY"}]},
     "finishReason SAFETY"),
])
def test_refusals_fail_the_item_without_retrying(protocol, body, reason, tmp_path):
    refusal = status(200, body=json.dumps(body).encode())
    with FakeApiServer(protocol, always={"risky": refusal}) as server:
        model = _model(server, tmp_path)
        out = model.generate(make_images(2), ["risky", "fine"], 5)
    assert isinstance(out[0], ApiFailure) and out[0].kind == "blocked"
    assert reason in str(out[0]) and out[1] == "answer to fine"
    assert len(server.chat_requests) == 2
