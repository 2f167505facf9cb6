"""Pending work split across ranks by whole batches, with results gathered step by step.

The pending examples are cut into batches exactly as a single process would cut them, and batch
i goes to rank i % N. Every rank therefore runs the same batches a single process would, with the
same composition and padding, so even batch-dependent numerics are bitwise equal whatever N is.
Ranks walk the batches in lockstep: at step s rank r computes batch s·N + r and sends its
predictions to the main rank, which writes the step's batches in batch order before the next
step. The store thus grows by whole batches in the single-process order: a job killed at any
moment leaves a prefix of that order, which a relaunch with any N resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from vlmclf.run.distributed import (
    Failure,
    broadcast_from_main,
    failure_of,
    gather_to_main,
    is_distributed,
    place,
    raise_shared_failure,
    shard,
)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchShare(Generic[T]):
    """This rank's part of the pending items and the number of lockstep steps of the job."""

    items: list[T]  # this rank's batches, concatenated: cut again by batch_size they reappear
    n_steps: int


def batch_share(items: Sequence[T], batch_size: int) -> BatchShare[T]:
    """The batches i with i % N == rank. Only the job's last batch can be short, and it is its
    rank's last, so cutting ``items`` of the share by ``batch_size`` gives back its batches."""
    here = place()
    batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    mine = shard(batches, here.rank, here.world_size)
    n_steps = -(-len(batches) // here.world_size)
    return BatchShare([item for batch in mine for item in batch], n_steps)


def gather_in_steps(results: Iterator[R], n_steps: int, consume: Callable[[list[R]], None]) -> None:
    """Walk ``n_steps`` in lockstep: each rank takes its next result from ``results`` (nothing
    once it has run out), the main rank receives the step's results in rank order and passes
    them to ``consume`` before the next step begins.

    An exception in any rank's ``results`` or in ``consume`` stops every rank after that step
    (see ``vlmclf.run.distributed``); what ``consume`` already took stays taken.
    """
    if not is_distributed():
        for result in results:
            consume([result])
        return
    for _ in range(n_steps):
        mine, own = _next_or_failure(results)
        parts = gather_to_main(mine)
        verdict: Failure | None = None
        if parts is not None:
            failures = [part for part in parts if isinstance(part, Failure)]
            verdict = failures[0] if failures else None
            if verdict is None:
                try:
                    consume([part for part in parts if part is not _NOTHING])
                except BaseException as err:  # noqa: BLE001 - told to every rank, re-raised
                    own, verdict = err, failure_of(err)
        verdict = broadcast_from_main(verdict)
        if verdict is not None:
            raise_shared_failure(verdict, own)


class _Nothing:
    """What a rank sends at a step where it has no batch left (pickles to the same object)."""

    def __reduce__(self) -> str:
        return "_NOTHING"


_NOTHING = _Nothing()


def _next_or_failure(results: Iterator[R]) -> tuple[object, BaseException | None]:
    """The next result, ``_NOTHING`` when there is none, or a Failure with the error itself."""
    try:
        return next(results, _NOTHING), None
    except Exception as err:  # noqa: BLE001 - sent to the main rank, re-raised after the step
        return failure_of(err), err


def pending_examples(examples: Sequence[T], pending_ids: Sequence[str]) -> list[T]:
    """The examples named by the main rank's pending ids, in that order. Each rank reads the
    dataset itself; an id it lacks means the ranks do not see the same data."""
    by_id = {example.id: example for example in examples}  # type: ignore[attr-defined]
    missing = [i for i in pending_ids if i not in by_id]
    if missing:
        raise ValueError(
            f"example {missing[0]!r} (and {len(missing) - 1} more) pending on the main rank is "
            "not among this rank's examples; every node must see the same dataset"
        )
    return [by_id[i] for i in pending_ids]
