"""Micro-batching: requests that arrive together are answered by one batched model call.

One worker thread owns the model. It takes the first waiting request, collects whatever else
arrives within ``window_s`` (up to ``max_batch``), drops the requests whose clients have gone,
and hands each group of compatible requests (same kind; same token budget unless the engine's
greedy decoder mixes budgets) to the engine as one batch. While a batch runs, new requests
queue, so under load batches fill without waiting.

The window alone splits batches on a busy machine: when a batch of 8 is answered, its 8 clients
send their next requests at once, but reading and decoding them takes longer than a few
milliseconds when the CPU is shared, so the first would start alone. The server therefore says
when a request is on its way, from the moment its connection is accepted (``expect``) until the
handler has submitted it (``arriving``), and while any is, the batcher waits for it, up to
``max_wait_s``; and the window runs from the last arrival, not the first, so a burst whose
connections come in a few milliseconds apart is collected whole. It also expects the clients
it has just answered to come back: until as many requests as the last batch answered have
arrived (or ``max_wait_s`` after that batch ended), it waits for them, so two cohorts of
clients that once fell out of step merge again instead of alternating half-full batches
forever. A lone sequential client is never waited for: its own next request is the one
expected, and it waits ``window_s`` as before.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from PIL import Image

from vlmclf.serve.protocol import Answer, ChatRequest, RequestError

logger = logging.getLogger("vlmclf.serve")

CLIENT_GONE = 499  # nginx's status for "client closed request"; never reaches the client


@dataclass(eq=False)
class Job:
    """One request waiting for the model, and where its outcome goes."""

    request: ChatRequest
    image: Image.Image
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    answer: Answer | None = None
    error: RequestError | None = None
    finished: bool = False
    held: bool = False  # while True, the outcome is kept back from the waiting handler
    pieces: queue.SimpleQueue[str] = field(default_factory=queue.SimpleQueue)
    emitted: bool = False  # text already went out: the request cannot be answered again

    def emit(self, piece: str) -> None:
        """Text decoded so far, for a streaming handler (sent before the job finishes)."""
        if piece:
            self.emitted = True
            self.pieces.put(piece)

    def finish(self, answer: Answer | None = None, error: RequestError | None = None) -> None:
        if not self.finished:
            self.answer, self.error, self.finished = answer, error, True
            if not self.held:
                self.done.set()

    def release(self) -> None:
        self.held = False
        if self.finished:
            self.done.set()

    def group_key(self) -> Hashable:
        """Requests with equal keys can share one model call (the engine may ask for less)."""
        if self.request.wants_logprobs:
            return ("score",)
        return ("generate", self.request.max_tokens)


class MicroBatcher:
    """Collects jobs for a few milliseconds and runs them in groups on one worker thread."""

    def __init__(
        self,
        run_group: Callable[[list[Job]], None],
        *,
        window_s: float = 0.005,
        max_batch: int = 8,
        max_wait_s: float = 0.1,
        group_key: Callable[[Job], Hashable] = Job.group_key,
    ):
        if window_s < 0 or max_batch < 1 or max_wait_s < window_s:
            raise ValueError(
                "need window_s >= 0, max_batch >= 1 and max_wait_s >= window_s, got "
                f"{window_s}, {max_batch}, {max_wait_s}"
            )
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._arriving = 0
        self._returning = 0  # clients answered by the last batch that have not come back yet
        self._returning_until = 0.0  # when that expectation lapses
        self._last_arrival = 0.0  # when a connection, a request or a job last came in
        self._arriving_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # what each model call got (for tests and the bench)
        self._run_group = run_group
        self._group_key = group_key
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="vlmclf-serve-model", daemon=True)
        self._thread.start()

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Held by a handler while it reads and decodes a request it will submit."""
        with self._arriving_lock:
            self._arriving += 1
            self._last_arrival = time.monotonic()
        try:
            yield
        finally:
            with self._arriving_lock:
                self._arriving -= 1

    def expect(self) -> Callable[[], None]:
        """Count a request as on its way from the moment its connection is accepted (before a
        handler thread has read a byte of it: in a burst of new connections that takes longer
        than the window); call the returned function, any number of times, when it is not."""
        with self._arriving_lock:
            self._arriving += 1
            self._last_arrival = time.monotonic()
        released = threading.Event()

        def release() -> None:
            with self._arriving_lock:
                if not released.is_set():
                    released.set()
                    self._arriving -= 1

        return release

    def submit(self, job: Job) -> Job:
        with self._arriving_lock:
            self._returning = max(0, self._returning - 1)
            self._last_arrival = time.monotonic()
        self._queue.put(job)
        return job

    def _expect_back(self, answered: int) -> None:
        with self._arriving_lock:
            self._returning = answered
            self._returning_until = time.monotonic() + self.max_wait_s

    def _deadline(self, start: float) -> float:
        """Until when to keep collecting: longer while requests are known to be on their way,
        and ``window_s`` after the last arrival (a burst is collected whole; a lone request
        waits ``window_s``, as before)."""
        deadline = max(
            start + self.window_s, min(self._last_arrival + self.window_s, start + self.max_wait_s)
        )
        if self._arriving > 0:
            deadline = max(deadline, start + self.max_wait_s)
        if self._returning > 0:
            deadline = max(deadline, self._returning_until)
        return deadline

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            live = [job for job in batch if not self._drop_if_cancelled(job)]
            groups: dict[Hashable, list[Job]] = {}
            for job in live:
                groups.setdefault(self._group_key(job), []).append(job)
            for job in live:  # answers go out only once the batcher expects their clients back
                job.held = True
            for group in groups.values():
                self.batch_sizes.append(len(group))
                self._run_safely(group)
            self._expect_back(sum(job.error is None for job in live))
            for job in live:
                job.release()

    def _collect(self) -> list[Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        start = time.monotonic()
        while len(batch) < self.max_batch:
            remaining = self._deadline(start) - time.monotonic()
            try:  # what is queued is always taken; short slices while waiting for more
                job = (
                    self._queue.get_nowait()
                    if remaining <= 0
                    else self._queue.get(timeout=min(remaining, 0.002))
                )
            except queue.Empty:
                if remaining <= 0:
                    break
                continue
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(job)
        return batch

    @staticmethod
    def _drop_if_cancelled(job: Job) -> bool:
        if job.cancelled.is_set():
            job.finish(error=RequestError(CLIENT_GONE, "the client went away", "client_gone"))
            return True
        return False

    def _run_safely(self, group: list[Job]) -> None:
        try:
            self._run_group(group)
        except Exception as err:  # noqa: BLE001 - the worker must outlive any model failure
            logger.exception("the model failed on a batch of %d", len(group))
            failure = RequestError(
                500, f"the model failed: {type(err).__name__}: {err}", "model_failed"
            )
            for job in group:
                job.finish(error=failure)
        for job in group:  # a job the engine forgot would hang its client
            job.finish(error=RequestError(500, "the model returned no answer", "model_failed"))
