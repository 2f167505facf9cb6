"""`vlmclf serve` driven by the official `openai` SDK over real loopback HTTP (random:llava)."""

from __future__ import annotations

import base64
import io
import threading

import pytest
import torch
from PIL import Image

from vlmclf.models import load_model
from vlmclf.serve import ChatModelServer, ServeLimits

openai = pytest.importorskip("openai")

KEY = "serve-test-key"
QUESTION = "What type of object is in this photo?"


@pytest.fixture(scope="module")
def model():
    return load_model("random:llava")


@pytest.fixture(scope="module")
def server(model):
    # a generous window so that the concurrency test's requests reliably share a batch
    served = ChatModelServer(model, "tiny-llava", port=0, api_key=KEY,
                             limits=ServeLimits(batch_window_ms=50))  # fmt: skip
    served.start_in_thread()
    yield served
    served.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60)


def image_url(colour: tuple[int, int, int] = (200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def user_message(url: str | None = None, text: str = QUESTION) -> dict:
    image = {"type": "image_url", "image_url": {"url": url or image_url()}}
    return {"role": "user", "content": [image, {"type": "text", "text": text}]}


def ask(client, messages: list[dict], **kwargs):
    return client.chat.completions.create(model="tiny-llava", messages=messages, **kwargs)


def test_a_completion_matches_the_local_model(client, model):
    reply = ask(client, [user_message()], max_tokens=6)
    image = Image.new("RGB", (32, 24), (200, 30, 30))
    (local,) = model.generate([image], [QUESTION], 6)
    assert reply.choices[0].message.content == local
    assert reply.usage.prompt_tokens == model.prompt_length(QUESTION, (32, 24))
    assert 0 < reply.usage.completion_tokens <= 6


def test_streaming_yields_the_same_text_in_chunks_and_a_usage_chunk(client):
    whole = ask(client, [user_message()], max_tokens=6)
    stream = ask(client, [user_message()], max_tokens=6, stream=True,
                 stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 3 and text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_streaming_without_usage_sends_no_usage_chunk(client):
    chunks = list(ask(client, [user_message()], max_tokens=3, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_logprobs_equal_a_direct_forward_pass(client, model):
    reply = ask(client, [user_message()], max_tokens=1, logprobs=True, top_logprobs=5)
    served = reply.choices[0].logprobs.content[0]
    image = Image.new("RGB", (32, 24), (200, 30, 30))
    with torch.no_grad():  # the slow way: one full forward, log-softmax of the last position
        logits = model.model(**model.build_inputs([image], [QUESTION])).logits[0, -1]
    values, ids = torch.log_softmax(logits.float(), -1).topk(5)
    assert [t.token for t in served.top_logprobs] == [model.tokenizer.decode([i]) for i in ids]
    assert [t.logprob for t in served.top_logprobs] == pytest.approx(values.tolist(), abs=1e-4)
    assert served.token == served.top_logprobs[0].token


def test_letter_scoring_through_the_api_client(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    from vlmclf.models.api import load_api_model

    api = load_api_model("openai:tiny-llava", base_url=server.base_url,
                         cache_path=tmp_path / "cache.sqlite", top_logprobs=20)  # fmt: skip
    try:
        image = Image.new("RGB", (32, 24), (200, 30, 30))
        (scores,) = api.score_letters([image], ["Answer with A, B, C or D."], list("ABCD"))
    finally:
        api.close()
    assert isinstance(scores, dict) and set(scores) == set("ABCD")


def test_concurrent_requests_share_batches_and_get_their_own_answers(client, server, model):
    colours = [(40 * i, 255 - 30 * i, 90) for i in range(6)]
    expected = model.generate([Image.new("RGB", (32, 24), c) for c in colours],
                              [QUESTION] * len(colours), 4)  # fmt: skip
    answers: dict[int, str] = {}
    before = len(server.batcher.batch_sizes)

    def one(i: int) -> None:
        answers[i] = ask(client, [user_message(image_url(colours[i]))], max_tokens=4)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(colours))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [answers[i].choices[0].message.content for i in range(len(colours))] == expected
    assert max(server.batcher.batch_sizes[before:]) > 1


def test_system_messages_anywhere_and_a_bare_image_url_string(client, model):
    system = {"role": "system", "content": "Answer briefly."}
    bare = {"role": "user", "content": [{"type": "image_url", "image_url": image_url()},
                                        {"type": "text", "text": QUESTION}]}  # fmt: skip
    first = ask(client, [system, bare], max_tokens=4)
    last = ask(client, [bare, system], max_tokens=4)
    image = Image.new("RGB", (32, 24), (200, 30, 30))
    assert first.choices[0].message.content == model.generate(
        [image], ["Answer briefly.\n" + QUESTION], 4)[0]  # fmt: skip
    assert last.choices[0].message.content == model.generate(
        [image], [QUESTION + "\nAnswer briefly."], 4)[0]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"n": 2}, "exactly one choice"),
        ({"temperature": 0.7}, "greedily"),
        ({"max_tokens": 0}, "positive integer"),
        ({"max_tokens": 100_000}, "--max-tokens-limit"),
        ({"stop": ["\n"]}, "stop"),
        ({"logprobs": True, "top_logprobs": 5, "max_tokens": 3}, "max_tokens=1"),
    ],
)
def test_settings_the_server_cannot_honour_are_refused(client, settings, words):
    with pytest.raises(openai.BadRequestError, match=words):
        ask(client, [user_message()], **settings)


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ([user_message(text="<image>\nWhat is it?")], "<image>"),
        ([{"role": "user", "content": QUESTION}], "got 0"),
        ([user_message(), user_message()], "got 2"),
        ([user_message(url="https://example.com/cat.png")], "fetches nothing"),
        ([user_message(url="data:image/png;base64,@@@")], "base64"),
        ([user_message(url="data:image/png;base64,aGVsbG8=")], "could not be decoded"),
        ([user_message(), {"role": "assistant", "content": "a cat"}], "role 'assistant'"),
    ],
)
def test_malformed_messages_get_a_400_and_the_server_stays_up(client, messages, words):
    with pytest.raises(openai.BadRequestError, match=words):
        ask(client, messages, max_tokens=3)
    assert client.models.list().data[0].id == "tiny-llava"


def test_models_retrieve_and_an_unknown_model(client):
    assert client.models.retrieve("tiny-llava").id == "tiny-llava"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    with pytest.raises(openai.NotFoundError, match="model_not_found"):
        client.chat.completions.create(model="gpt-4o", messages=[user_message()])


def test_a_wrong_or_missing_key_is_a_401_on_every_route(server):
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=server.base_url, api_key=key or "x", max_retries=0,
                            default_headers={} if key else {"Authorization": ""})  # fmt: skip
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        with pytest.raises(openai.AuthenticationError):
            ask(bad, [user_message()], max_tokens=2)
