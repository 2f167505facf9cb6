"""`vlmclf serve` on organism:vlm: the server's greedy decoder against the model's own generate,
and streaming that sends text while the batch is still decoding (official `openai` SDK)."""

from __future__ import annotations

import base64
import io
import random
import threading

import pytest
from PIL import Image

from vlmclf.models import load_model
from vlmclf.serve import ChatModelServer, ServeLimits
from vlmclf.serve.greedy import GreedyDecoder, GreedyRow
from vlmclf.serve.text_stream import TextStream

openai = pytest.importorskip("openai")

QUESTION = "What type of object is in this photo?"
SHORT = "What is this?"


@pytest.fixture(scope="module")
def model():
    return load_model("organism:vlm")


def photo(seed: int) -> Image.Image:
    """A 64x64 image of random colour blocks (the bench's kind of image, smaller)."""
    rng = random.Random(seed)
    image = Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(4):
        block = Image.new("RGB", (rng.randrange(8, 32),) * 2,
                          tuple(rng.randrange(256) for _ in range(3)))  # fmt: skip
        image.paste(block, (rng.randrange(48), rng.randrange(48)))
    return image


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def text_of(model, token_ids: list[int]) -> str:
    return model.tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def test_batched_greedy_answers_equal_generate_one_at_a_time(model):
    # different question lengths (padding between the shared prefix and the rows) and budgets
    cases = [(photo(0), QUESTION, 8), (photo(1), SHORT, 3), (photo(2), QUESTION, 6),
             (photo(3), SHORT, 1)]  # fmt: skip
    decoder = GreedyDecoder(model)
    decoded = decoder.decode([GreedyRow(image, q, budget) for image, q, budget in cases])
    expected = [model.generate([image], [q], budget)[0] for image, q, budget in cases]
    assert [text_of(model, d.token_ids) for d in decoded] == expected
    assert all(len(d.token_ids) <= budget for d, (_, _, budget) in zip(decoded, cases, strict=True))
    assert len(decoder._prefixes) == 1  # the system prompt's keys and values, computed once


def test_a_row_whose_client_left_stops_and_the_others_are_unchanged(model):
    tokens: list[int] = []
    gone = GreedyRow(photo(4), SHORT, 12, on_token=tokens.append, gone=lambda: len(tokens) >= 2)
    kept = GreedyRow(photo(5), SHORT, 5)
    left, stayed = GreedyDecoder(model).decode([gone, kept])
    assert left.cancelled and len(left.token_ids) == 2
    assert not stayed.cancelled
    assert text_of(model, stayed.token_ids) == model.generate([photo(5)], [SHORT], 5)[0]


def test_text_stream_pieces_join_to_the_stripped_answer(model):
    text = "  Café 😀 naïve,  résumé — ok\n\n"
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(model.tokenizer)
    pieces = [stream.push(token) for token in ids]
    answer = model.tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert not any("\ufffd" in piece for piece in pieces)  # no half characters sent
    assert sum(bool(piece) for piece in pieces) > 5  # sent as it came, not at the end
    assert stream.finish(answer) == ""  # only the trailing whitespace was held back
    assert "".join(pieces) == answer


@pytest.fixture(scope="module")
def server(model):
    # a generous window so that the mixed-budget test's requests reliably share a batch
    limits = ServeLimits(batch_window_ms=300, batch_max_wait_ms=300)
    served = ChatModelServer(model, "organism", port=0, limits=limits)
    served.start_in_thread()
    yield served
    served.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def ask(client, image: Image.Image, question: str = QUESTION, **kwargs):
    content = [{"type": "image_url", "image_url": {"url": data_url(image)}},
               {"type": "text", "text": question}]  # fmt: skip
    return client.chat.completions.create(
        model="organism", messages=[{"role": "user", "content": content}], **kwargs
    )


def test_streaming_sends_text_while_the_batch_is_still_decoding(client, server, model):
    decoder = server.engine.greedy
    first_piece_seen = threading.Event()
    waited_in_vain: list[bool] = []
    forward = decoder._forward
    steps = 0

    def forward_that_waits_for_the_client(*args, **kwargs):
        nonlocal steps
        steps += 1
        if steps == 4:  # three tokens decoded: the client must have text before the fourth
            waited_in_vain.append(not first_piece_seen.wait(timeout=30))
        return forward(*args, **kwargs)

    decoder._forward = forward_that_waits_for_the_client
    try:
        stream = ask(client, photo(6), max_tokens=6, stream=True,
                     stream_options={"include_usage": True})  # fmt: skip
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            if chunk.choices and chunk.choices[0].delta.content:
                first_piece_seen.set()
    finally:
        del decoder._forward
    assert waited_in_vain == [False]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == model.generate([photo(6)], [QUESTION], 6)[0]
    whole = ask(client, photo(6), max_tokens=6)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    assert finish == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_requests_with_different_budgets_share_a_batch(client, server, model):
    cases = [(photo(7), 2), (photo(8), 6), (photo(9), 4)]
    replies: dict[int, object] = {}
    before = len(server.batcher.batch_sizes)

    def one(i: int) -> None:
        replies[i] = ask(client, cases[i][0], SHORT, max_tokens=cases[i][1])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(server.batcher.batch_sizes[before:]) > 1
    for i, (image, budget) in enumerate(cases):
        reply = replies[i]
        assert reply.choices[0].message.content == model.generate([image], [SHORT], budget)[0]
        assert reply.usage.completion_tokens <= budget
