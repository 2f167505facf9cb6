"""The prefetch look-ahead: batches in order, and decoded bytes held within the byte budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from PIL import Image

from vlmclf.data.types import BadExampleError, Example
from vlmclf.methods.base import LoadedExample
from vlmclf.records import Prediction
from vlmclf.run.prefetch import ByteBudget, decoded_batches, image_bytes

SIDE = 500
IMAGE_BYTES = SIDE * SIDE * 3


class Tracker:
    """Counts decoded bytes from the moment a loader returns until the consumer is done with
    the batch: the memory the look-ahead holds, measured outside the code under test."""

    def __init__(self) -> None:
        self.alive = 0
        self.most = 0
        self.lock = threading.Lock()

    def loader(self, index: int) -> Callable[[], Image.Image]:
        def load() -> Image.Image:
            image = Image.new("RGB", (SIDE, SIDE), (index % 256, 0, 0))
            with self.lock:
                self.alive += image_bytes(image)
                self.most = max(self.most, self.alive)
            return image

        return load

    def consumed(self, items: list) -> None:
        with self.lock:
            self.alive -= sum(image_bytes(i.image) for i in items if isinstance(i, LoadedExample))


def examples(tracker: Tracker, count: int) -> list[Example]:
    return [Example(str(i), i % 3, "test", f"mem:{i}", tracker.loader(i)) for i in range(count)]


def consume(max_bytes: int, batch_size: int = 8, workers: int = 3) -> tuple[Tracker, list[str]]:
    """Run the look-ahead with a slow consumer, so decoders get as far ahead as they may."""
    tracker = Tracker()
    seen: list[str] = []
    for items in decoded_batches(examples(tracker, 64), batch_size, workers, max_bytes=max_bytes):
        time.sleep(0.02)  # the model at work
        seen += [item.example.id for item in items]
        tracker.consumed(items)
    return tracker, seen


def test_byte_budget_bounds_the_decoded_bytes_held() -> None:
    budget = 4 * IMAGE_BYTES
    limited, order = consume(budget)
    unlimited, _ = consume(10**15)
    assert order == [str(i) for i in range(64)]
    # a look-ahead decode starts only with room left (after the first wave, before any size is
    # known); the awaited batch never waits
    assert limited.most <= budget + (3 + 8) * IMAGE_BYTES
    assert unlimited.most >= 3 * 8 * IMAGE_BYTES  # batches alone let it hold three batches
    assert limited.most < unlimited.most


def test_budget_reports_its_own_peak() -> None:
    tracker = Tracker()
    budget = ByteBudget(2 * IMAGE_BYTES)
    for items in decoded_batches(examples(tracker, 20), 4, 2, budget=budget):
        tracker.consumed(items)
    assert budget.held == 0
    assert 4 * IMAGE_BYTES <= budget.peak <= 2 * IMAGE_BYTES + (2 + 4) * IMAGE_BYTES


def test_tiny_budget_still_finishes_in_order_with_failures_kept() -> None:
    tracker = Tracker()
    items = examples(tracker, 10)

    def broken() -> Image.Image:
        raise BadExampleError("mem:3: truncated or corrupt image data")

    items[3] = Example("3", 0, "test", "mem:3", broken)
    out = [item for batch in decoded_batches(items, 3, 4, max_bytes=1) for item in batch]
    assert [getattr(i, "example_id", None) or i.example.id for i in out] == [
        str(i) for i in range(10)
    ]
    assert isinstance(out[3], Prediction) and not out[3].ok


def test_stopping_early_does_not_hang_on_waiting_decoders() -> None:
    tracker = Tracker()
    done = threading.Event()

    def stop_after_one_batch() -> None:
        batches = decoded_batches(examples(tracker, 200), 4, 4, max_bytes=IMAGE_BYTES)
        next(batches)
        time.sleep(0.05)  # decoders of later batches are now waiting for budget
        batches.close()
        done.set()

    thread = threading.Thread(target=stop_after_one_batch, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert done.is_set()
    assert tracker.most < 200 * IMAGE_BYTES / 4  # the queued rest was cancelled, not decoded


def test_a_handed_over_batch_is_emptied_when_the_next_is_asked_for() -> None:
    """So its images are freed while the next batch is awaited, even though the consumer's loop
    variable still names the list."""
    tracker = Tracker()
    batches = decoded_batches(examples(tracker, 6), 3, 2)
    first = next(batches)
    assert len(first) == 3
    second = next(batches)
    assert first == [] and len(second) == 3
    batches.close()
