"""Decode images a few batches ahead of the model, in worker threads, within a memory budget.

The look-ahead is bounded twice: by batches (``PREFETCH_BATCHES`` beyond the one the model
waits for) and by bytes (``PREFETCH_BYTES`` of decoded pixels held, the batch the model is
working on included). An image of the batch the model waits for is always decoded at once; an
image of a later batch waits to start until the bytes held and those being decoded (estimated
from the largest image so far) leave room for it, so the decoded pixels in memory stay within
``PREFETCH_BYTES`` plus the batch the model waits for. Order and results do not depend on the
budget: it only changes when images are decoded.
"""

from __future__ import annotations

import ctypes
import platform
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

_LARGE_ALLOCATION = 4 * 2**20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def return_freed_images_to_the_os() -> None:
    """Have glibc map every allocation of 4 MiB or more on its own, so a freed image buffer
    goes back to the OS at once.

    By default glibc raises this threshold (up to 32 MiB) when a large block is freed, after
    which Pillow's 16 MiB image blocks come from per-thread heaps that keep freed memory: with
    four decoding threads that held over 600 MB of dead images in `bench/images.py`. Setting
    the threshold fixes it and stops the adjustment. A no-op outside glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _LARGE_ALLOCATION)
    except (OSError, AttributeError):  # pragma: no cover - an unusual libc
        return


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
    """Bytes Pillow holds for ``image``: it stores 1, 2 or 4 bytes a pixel (RGB as RGBX)."""
    if image.mode in ("1", "L", "P"):
        per_pixel = 1
    elif image.mode.startswith("I;16"):
        per_pixel = 2
    else:
        per_pixel = 4
    return image.width * image.height * per_pixel


class ByteBudget:
    """Decoded bytes held between the decoders and the consumer, and the batch the consumer
    waits for (``head``). Its images never wait; an image of a later batch starts decoding only
    if the bytes held plus those of every decode under way, itself included (each counted as
    the largest image decoded so far), fit in ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self.head = 0
        self.decoding = 0
        self.largest = 0
        self._changed = threading.Condition()

    def _room_for_one_more(self) -> bool:
        return self.held + (self.decoding + 1) * self.largest <= self.limit

    def decode(self, example: Example, batch_index: int) -> Decoded:
        with self._changed:
            self._changed.wait_for(lambda: batch_index <= self.head or self._room_for_one_more())
            self.decoding += 1
        item = decode(example)  # never raises: failures come back as Predictions
        size = decoded_bytes(item)
        with self._changed:
            self.decoding -= 1
            self.held += size
            self.largest = max(self.largest, size)
            self.peak = max(self.peak, self.held)
            self._changed.notify_all()
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

    A batch's images count against the budget until the consumer asks for the next batch; the
    list handed over is then emptied, so that the images are freed while the next batch is
    awaited (a consumer that keeps them must copy the list).
    ``budget`` may be passed to read its ``peak`` afterwards.
    """
    budget = ByteBudget(max_bytes) if budget is None else budget
    return_freed_images_to_the_os()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[list[Future[Decoded]]] = deque()
        consumed = 0

        def hand_over(items: list[Decoded]) -> Iterator[list[Decoded]]:
            yield items
            budget.release(items)
            items.clear()  # the consumer's list too: its images can go before the next batch

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
                    yield from hand_over(next_batch())
            while pending:
                yield from hand_over(next_batch())
        finally:  # the consumer stopped early: drop queued work, wake waiting decoders
            for futures in pending:
                for future in futures:
                    future.cancel()
            budget.wait_for_batch(sys.maxsize)
