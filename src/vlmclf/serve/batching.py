"""Micro-batching: requests that arrive together are answered by one batched model call.

One worker thread owns the model. It takes the first waiting request, collects whatever else
arrives within ``window_s`` (up to ``max_batch``), drops the requests whose clients have gone,
and hands each group of compatible requests (same kind, same token budget) to the engine as one
batch. While a batch runs, new requests queue, so under load batches fill without waiting.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
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

    def finish(self, answer: Answer | None = None, error: RequestError | None = None) -> None:
        if not self.done.is_set():
            self.answer, self.error = answer, error
            self.done.set()

    def group_key(self) -> Hashable:
        """Requests with equal keys can share one model call."""
        if self.request.wants_logprobs:
            return ("score",)
        return ("generate", self.request.max_tokens)


class MicroBatcher:
    """Collects jobs for a few milliseconds and runs them in groups on one worker thread."""

    def __init__(
        self, run_group: Callable[[list[Job]], None], *, window_s: float = 0.005, max_batch: int = 8
    ):
        if window_s < 0 or max_batch < 1:
            raise ValueError(
                f"window_s must be >= 0 and max_batch >= 1, got {window_s}, {max_batch}"
            )
        self.window_s = window_s
        self.max_batch = max_batch
        self.batch_sizes: list[int] = []  # what each model call got (for tests and the bench)
        self._run_group = run_group
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="vlmclf-serve-model", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        self._queue.put(job)
        return job

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
                groups.setdefault(job.group_key(), []).append(job)
            for group in groups.values():
                self.batch_sizes.append(len(group))
                self._run_safely(group)

    def _collect(self) -> list[Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
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
