"""Decode images a few batches ahead of the model, in worker threads, within a memory budget.

The look-ahead is bounded twice: by batches (``PREFETCH_BATCHES`` beyond the one the model
waits for) and by bytes (``PREFETCH_BYTES`` of decoded pixels held, the batch the model is
working on included). An image of the batch the model waits for is always decoded at once; an
image of a later batch waits to start until the bytes held fall under the budget, so the decoded
pixels in memory stay under ``PREFETCH_BYTES`` plus one image per worker. Order and results do
not depend on the budget: it only changes when images are decoded.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from PIL import Image

from vlmclf.data.types import BadExampleError, Example
from vlmclf.methods.base import LoadedExample
from vlmclf.records import Prediction

PREFETCH_BATCHES = 2
PREFETCH_BYTES = 512 * 2**20

Decoded = LoadedExample | Prediction


def decode(example: Example) -> Decoded:
    """The decoded image, or a failed Prediction saying why it could not be used."""
    try:
        return LoadedExample(example, example.load())
    except BadExampleError as err:
        return Prediction.failed(example.id, example.label, str(err))
    except Exception as err:  # a reader bug must not cost the run: record it like bad data
        return Prediction.failed(
            example.id, example.label, f"{example.source}: {type(err).__name__}: {err}"
        )


def batched(items: Sequence[Example], size: int) -> Iterator[list[Example]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def decoded_bytes(item: Decoded) -> int:
    """Bytes of pixel memory a decoded item holds (0 for a failure)."""
    if not isinstance(item, LoadedExample):
        return 0
    return image_bytes(item.image)


def image_bytes(image: Image.Image) -> int:
    bytes_per_band = 4 if image.mode in ("I", "F") or image.mode.startswith("I;32") else 1
    if image.mode.startswith("I;16"):
        bytes_per_band = 2
    return image.width * image.height * len(image.getbands()) * bytes_per_band


class ByteBudget:
    """Decoded bytes held between the decoders and the consumer, and the batch the consumer
    waits for (``head``): its images never wait, later ones wait while the budget is spent."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self.head = 0
        self._changed = threading.Condition()

    def decode(self, example: Example, batch_index: int) -> Decoded:
        with self._changed:
            self._changed.wait_for(lambda: batch_index <= self.head or self.held < self.limit)
        item = decode(example)
        with self._changed:
            self.held += decoded_bytes(item)
            self.peak = max(self.peak, self.held)
        return item

    def wait_for_batch(self, batch_index: int) -> None:
        with self._changed:
            self.head = batch_index
            self._changed.notify_all()

    def release(self, items: list[Decoded]) -> None:
        with self._changed:
            self.held -= sum(decoded_bytes(item) for item in items)
            self._changed.notify_all()


def decoded_batches(
    examples: Sequence[Example],
    batch_size: int,
    workers: int,
    max_bytes: int = PREFETCH_BYTES,
    budget: ByteBudget | None = None,
) -> Iterator[list[Decoded]]:
    """Batches of decoded examples in order, decoded ahead in worker threads within the budget.

    A batch's images count against the budget until the consumer asks for the next batch.
    ``budget`` may be passed to read its ``peak`` afterwards.
    """
    budget = ByteBudget(max_bytes) if budget is None else budget
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[list[Future[Decoded]]] = deque()
        consumed = 0

        def next_batch() -> list[Decoded]:
            nonlocal consumed
            budget.wait_for_batch(consumed)
            items = [future.result() for future in pending.popleft()]
            consumed += 1
            return items

        try:
            for index, batch in enumerate(batched(examples, batch_size)):
                pending.append([pool.submit(budget.decode, e, index) for e in batch])
                if len(pending) > PREFETCH_BATCHES:
                    items = next_batch()
                    yield items
                    budget.release(items)
            while pending:
                items = next_batch()
                yield items
                budget.release(items)
        finally:  # the consumer stopped early: drop queued work, wake waiting decoders
            for futures in pending:
                for future in futures:
                    future.cancel()
            budget.wait_for_batch(sys.maxsize)
