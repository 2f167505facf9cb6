"""Each protocol against its loopback server: request shape, answers, keys, errors, scoring."""

from __future__ import annotations

import hashlib
import io
import math

import pytest
from api_servers import FakeApiServer, decode_image, fast_settings, make_images, status
from PIL import Image

from vlmclf.models.api import (
    ApiAnswer,
    ApiAuthError,
    ApiKeyMissing,
    ApiModelNotFound,
    ScoringNotSupported,
    load_api_model,
)
from vlmclf.models.base import ChatAPI

KEY_VARIABLES = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
PROTOCOLS = ("openai", "anthropic", "gemini")


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in KEY_VARIABLES[:3]:
        monkeypatch.setenv(name, "test-key")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_happy_path_sends_key_image_and_prompt(protocol, tmp_path):
    images = make_images(3)
    questions = [f"What is in photo {i}?" for i in range(3)]
    with FakeApiServer(protocol) as server:
        model = load_api_model(f"{protocol}:test-model", **fast_settings(server, tmp_path / "c"))
        answers = model.generate(images, questions, max_new_tokens=20)
    assert isinstance(model, ChatAPI)
    assert answers == [f"answer to {q}" for q in questions]
    assert all(isinstance(a, ApiAnswer) and a.meta["truncated"] is False for a in answers)
    seen = {r.prompt: r for r in server.chat_requests}
    assert set(seen) == set(questions)
    for image, question in zip(images, questions, strict=True):
        request = seen[question]
        sent = Image.open(io.BytesIO(decode_image(request.image_b64)))
        assert sent.format == "PNG" and sent.size == image.size
        assert sent.convert("RGB").tobytes() == image.tobytes()
        assert "test-key" not in request.path
    headers = server.chat_requests[0].headers
    if protocol == "openai":
        assert headers["authorization"] == "Bearer test-key"
        assert server.chat_requests[0].image_b64.startswith("data:image/png;base64,")
        assert server.chat_requests[0].path == "/v1/chat/completions"
    elif protocol == "anthropic":
        assert headers["x-api-key"] == "test-key" and headers["anthropic-version"]
        assert server.chat_requests[0].path == "/v1/messages"
        assert server.chat_requests[0].body["max_tokens"] == 20
    else:
        assert headers["x-goog-api-key"] == "test-key"
        assert server.chat_requests[0].path == "/v1beta/models/test-model:generateContent"
        assert "key=" not in server.chat_requests[0].path
    usage = model.usage()
    assert usage["requests"] == 3 and usage["answered"] == 3 and usage["failures"] == 0
    assert usage["input_tokens"] == 300
    assert usage["output_tokens"] == sum(len(a.split()) for a in answers)


def test_image_max_side_downsizes_keeping_aspect(tmp_path):
    image = Image.new("RGB", (400, 100), (10, 200, 30))
    with FakeApiServer("openai") as server:
        model = load_api_model("openai:test-model",
                               **fast_settings(server, tmp_path / "c", image_max_side=80))
        model.generate([image], ["q"], max_new_tokens=5)
    sent = Image.open(io.BytesIO(decode_image(server.chat_requests[0].image_b64)))
    assert sent.size == (80, 20)


def test_cache_key_uses_bytes_sent(tmp_path):
    """The same image at another max side is another request (the bytes sent differ)."""
    image = make_images(1, size=(64, 64))
    with FakeApiServer("openai") as server:
        for side in (None, 32, None):
            model = load_api_model("openai:test-model", **fast_settings(
                server, tmp_path / "c", image_max_side=side))
            model.generate(image, ["q"], max_new_tokens=5)
    digests = [hashlib.sha256(decode_image(r.image_b64)).hexdigest()
               for r in server.chat_requests]
    assert len(digests) == 2 and digests[0] != digests[1]


@pytest.mark.parametrize(("protocol", "variable"), [
    ("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"), ("gemini", "GEMINI_API_KEY"),
])
def test_missing_key_names_the_variable(protocol, variable, monkeypatch, tmp_path):
    monkeypatch.delenv(variable)
    with pytest.raises(ApiKeyMissing, match=variable):
        load_api_model(f"{protocol}:some-model", cache_path=tmp_path / "c")


def test_gemini_falls_back_to_google_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(ApiKeyMissing, match="GEMINI_API_KEY \\(or GOOGLE_API_KEY\\)"):
        load_api_model("gemini:m", cache_path=tmp_path / "c")
    monkeypatch.setenv("GOOGLE_API_KEY", "test-key")
    with FakeApiServer("gemini") as server:
        model = load_api_model("gemini:test-model", **fast_settings(server, tmp_path / "c"))
        assert model.generate(make_images(1), ["q"], 5) == ["answer to q"]
    assert server.chat_requests[0].headers["x-goog-api-key"] == "test-key"


def test_openai_compatible_server_needs_no_key(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeApiServer("openai", key=None) as server:
        model = load_api_model("openai:test-model", **fast_settings(server, tmp_path / "c"))
        assert model.generate(make_images(1), ["q"], 5) == ["answer to q"]
    assert "authorization" not in server.chat_requests[0].headers


def test_unauthorized_stops_at_once_without_retrying(tmp_path):
    with FakeApiServer("anthropic", key="the-right-key") as server:
        model = load_api_model("anthropic:test-model",
                               **fast_settings(server, tmp_path / "c", concurrency=1))
        with pytest.raises(ApiAuthError, match="401.*ANTHROPIC_API_KEY") as caught:
            model.generate(make_images(3), ["a", "b", "c"], 5)
    assert len(server.chat_requests) == 1
    assert caught.value.results == [None, None, None]
    assert model.usage()["retries"] == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_model_lists_the_served_ones(protocol, tmp_path):
    with FakeApiServer(protocol, models=("llava-7b", "qwen2-vl")) as server:
        model = load_api_model(f"{protocol}:gpt-4o", **fast_settings(server, tmp_path / "c"))
        with pytest.raises(ApiModelNotFound) as caught:
            model.generate(make_images(2), ["a", "b"], 5)
    message = str(caught.value)
    assert f"model gpt-4o is not served by {server.base_url}; it lists: llava-7b, qwen2-vl" \
        == message
    assert sum(r.method == "GET" for r in server.requests) == 1  # listed once, lazily


def test_wrong_base_url_is_reported_as_such(tmp_path):
    with FakeApiServer("openai") as server:
        settings = fast_settings(server, tmp_path / "c", base_url=server.base_url + "/api")
        model = load_api_model("openai:test-model", **settings)
        with pytest.raises(ApiModelNotFound, match="404 both for test-model and for its model "
                           "list: is the base URL right"):
            model.generate(make_images(1), ["q"], 5)


def test_model_listing_is_not_fetched_when_all_is_well(tmp_path):
    with FakeApiServer("openai") as server:
        model = load_api_model("openai:test-model", **fast_settings(server, tmp_path / "c"))
        model.generate(make_images(2), ["a", "b"], 5)
    assert all(r.method == "POST" for r in server.requests)


def _letter_logprobs(prompt: str) -> list[tuple[str, float]]:
    return [("B", math.log(0.6)), (" A", math.log(0.2)), ("A", math.log(0.1)),
            ("(C", math.log(0.05)), ("The", math.log(0.05))]


def test_openai_scores_letters_from_top_logprobs(tmp_path):
    with FakeApiServer("openai", logprobs=_letter_logprobs) as server:
        model = load_api_model("openai:test-model",
                               **fast_settings(server, tmp_path / "c", top_logprobs=5))
        scores = model.score_letters(make_images(2), ["Pick: A, B, C or D", "again"],
                                     ["A", "B", "C", "D"])
    request = server.chat_requests[0].body
    assert request["logprobs"] is True and request["top_logprobs"] == 5
    assert request["max_tokens"] == 1
    for row in scores:
        assert row["A"] == pytest.approx(math.log(0.3))  # " A" and "A" are one answer
        assert row["B"] == pytest.approx(math.log(0.6))
        assert row["C"] == pytest.approx(math.log(0.05))
        assert row["D"] is None


def test_server_without_logprobs_cannot_score(tmp_path):
    with FakeApiServer("openai", logprobs=None) as server:
        model = load_api_model("openai:test-model", **fast_settings(server, tmp_path / "c"))
        with pytest.raises(ScoringNotSupported, match="returned no logprobs"):
            model.score_letters(make_images(1), ["q"], ["A", "B"])


@pytest.mark.parametrize("protocol", ["anthropic", "gemini"])
def test_apis_without_logprobs_refuse_to_score(protocol, tmp_path):
    with FakeApiServer(protocol) as server:
        model = load_api_model(f"{protocol}:test-model", **fast_settings(server, tmp_path / "c"))
        with pytest.raises(ScoringNotSupported, match="cannot score lettered choices"):
            model.score_letters(make_images(1), ["q"], ["A", "B"])
    assert server.requests == []


@pytest.mark.parametrize("spec", ["mistral:x", "openai:", "gpt-4o"])
def test_bad_specs_say_what_is_expected(spec, tmp_path):
    with pytest.raises(ValueError, match="openai:<model>|names no model"):
        load_api_model(spec, cache_path=tmp_path / "c")


def test_scoring_retries_and_caches(tmp_path):
    with FakeApiServer("openai", logprobs=_letter_logprobs,
                       by_prompt={"q": [status(500)]}) as server:
        first = load_api_model("openai:test-model", **fast_settings(server, tmp_path / "c"))
        a = first.score_letters(make_images(1), ["q"], ["A", "B"])
        second = load_api_model("openai:test-model", **fast_settings(server, tmp_path / "c"))
        b = second.score_letters(make_images(1), ["q"], ["A", "B"])
        generated = second.generate(make_images(1), ["q"], 5)  # not confused with a score
    assert a == b and a[0]["B"] == pytest.approx(math.log(0.6))
    assert len(server.chat_requests) == 3 and second.usage()["cached_hits"] == 1
    assert generated == ["answer to q"]
