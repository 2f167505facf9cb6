"""Who this process is in a torchrun job, and the few collectives a sharded run needs.

torchrun starts one process per device and tells each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). A process started any other way is rank 0 of 1: it
never imports ``torch.distributed`` and every collective here is the identity, so single-process
code paths are unchanged. The process group is created on the first collective (gloo on CPU,
NCCL where CUDA is there, after ``torch.cuda.set_device(LOCAL_RANK)`` so that ``cuda`` means this
rank's own GPU) and destroyed at exit.

Failures travel with the data: ``on_main``, ``from_main`` and ``every_rank`` run a piece of work
and, when it raises anywhere, make every rank raise at the same point, so no rank waits forever
in a collective that the others will never reach. The rank where it happened raises its own error
(or, if it is not the main rank, a quiet ``RankFailed``); the main rank raises a ``RankFailed``
naming the rank, which the CLI prints as one line.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

MAIN_RANK = 0
BACKEND_ENV = "VLMCLF_DIST_BACKEND"  # override the backend (gloo, nccl) the job uses
TIMEOUT_ENV = "VLMCLF_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 60.0  # a rank may wait this long for the others (loading a large model)


@dataclass(frozen=True)
class Place:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == MAIN_RANK


class RankFailed(Exception):
    """Another rank (or the link to it) failed, so this rank stops too.

    ``quiet``: the main rank reports this failure, so this rank exits non-zero without printing.
    """

    def __init__(self, message: str, *, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet


def place() -> Place:
    """This process's rank, world size and local rank from torchrun's environment."""
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(name)
        try:
            values[name] = default if raw in (None, "") else int(raw)
        except ValueError:
            raise ValueError(
                f"environment variable {name} must be an integer, got {raw!r}"
            ) from None
    found = Place(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if found.world_size < 1 or not 0 <= found.rank < found.world_size:
        raise ValueError(f"RANK={found.rank} is outside WORLD_SIZE={found.world_size}")
    return found


def is_main_process() -> bool:
    """True on the rank that writes the store, prints and writes reports (a plain process)."""
    return place().is_main


def is_distributed() -> bool:
    return place().world_size > 1


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Item i goes to rank i % world_size: deterministic, balanced to within one item, and the
    same whatever the ranks run on."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return list(items[rank::world_size])


# --------------------------------------------------------------------------- process group


def ensure_process_group() -> None:
    """Create this job's process group once (a no-op in a plain process)."""
    if not is_distributed():
        return
    from vlmclf.run.launcher_watch import stop_with_launcher

    stop_with_launcher()  # a rank whose launcher died must not go on alone
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    backend = os.environ.get(BACKEND_ENV) or ("nccl" if cuda else "gloo")
    if cuda and place().local_rank < torch.cuda.device_count():
        torch.cuda.set_device(place().local_rank)  # `cuda` now means this rank's own GPU
    dist.init_process_group(backend=backend, timeout=collective_timeout())
    atexit.register(shutdown)


def shutdown() -> None:
    """Leave together, then destroy the process group (if this process made one).

    A rank that finishes early (the others while the main rank trains a probe or summarises)
    waits at a last barrier: tearing gloo down while a peer still holds its connections made
    the early rank abort at exit ("terminate called without an active exception") now and
    then. A peer that already died breaks the barrier at once; the barrier's error is moot
    at exit and is dropped."""
    if not is_distributed():
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=collective_timeout())
        else:
            dist.barrier()
    except Exception:  # noqa: BLE001 - leaving anyway; the job's own error was reported
        pass
    dist.destroy_process_group()


def collective_timeout() -> timedelta:
    """How long a rank waits for the others in any collective, the exit barrier included."""
    return timedelta(minutes=float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_MIN))


def _collective(name: str, call: Callable[[], T]) -> T:
    """Run a torch.distributed call; a broken link becomes one line naming this rank."""
    ensure_process_group()
    try:
        return call()
    except RuntimeError as err:  # gloo/NCCL: a peer died or the rendezvous broke
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RankFailed(
            f"rank {place().rank}: {name} failed, another rank has probably died ({first})"
        ) from err


# --------------------------------------------------------------------------- raw collectives


def broadcast_from_main(value: Any) -> Any:
    """The main rank's ``value`` on every rank (any picklable object)."""
    if not is_distributed():
        return value
    import torch.distributed as dist

    box = [value if is_main_process() else None]
    _collective("broadcast", lambda: dist.broadcast_object_list(box, src=MAIN_RANK))
    return box[0]


def gather_to_main(value: Any) -> list[Any] | None:
    """Every rank's ``value``, in rank order, on the main rank; None on the others."""
    if not is_distributed():
        return [value]
    import torch.distributed as dist

    here = place()
    out: list[Any] | None = [None] * here.world_size if here.is_main else None
    _collective("gather", lambda: dist.gather_object(value, out, dst=MAIN_RANK))
    return out


def all_gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (keep it small)."""
    if not is_distributed():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * place().world_size
    _collective("all_gather", lambda: dist.all_gather_object(out, value))
    return out


def barrier() -> None:
    if not is_distributed():
        return
    import torch.distributed as dist

    _collective("barrier", dist.barrier)


# --------------------------------------------------------------------------- failures shared


@dataclass(frozen=True)
class Failure:
    """What one rank sends instead of its result when its work raised."""

    rank: int
    message: str


def describe(err: BaseException) -> str:
    """One line: the error's type and first line of text."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def failure_of(err: BaseException) -> Failure:
    return Failure(place().rank, f"rank {place().rank}: {describe(err)}")


def raise_shared_failure(failure: Failure, own: BaseException | None) -> None:
    """Stop this rank because of ``failure``: the rank where it happened re-raises its own
    error (quietly, off the main rank); every other rank raises ``RankFailed``."""
    here = place()
    if own is not None and failure.rank == here.rank:
        if here.is_main:
            raise own
        raise RankFailed(failure.message, quiet=True) from own
    raise RankFailed(failure.message, quiet=not here.is_main)


def on_main(work: Callable[[], T]) -> T | None:
    """Run ``work`` on the main rank alone; every rank learns whether it raised. Returns its
    value on the main rank and None elsewhere."""
    if not is_distributed():
        return work()
    value, own, failure = None, None, None
    if is_main_process():
        try:
            value = work()
        except BaseException as err:  # noqa: BLE001 - told to every rank, then re-raised
            own, failure = err, failure_of(err)
    failure = broadcast_from_main(failure)
    if failure is not None:
        raise_shared_failure(failure, own)
    return value


def from_main(work: Callable[[], T]) -> T:
    """Run ``work`` on the main rank alone and give its value to every rank."""
    if not is_distributed():
        return work()
    value, own = None, None
    if is_main_process():
        try:
            value = work()
        except BaseException as err:  # noqa: BLE001 - told to every rank, then re-raised
            own, value = err, failure_of(err)
    value = broadcast_from_main(value)
    if isinstance(value, Failure):
        raise_shared_failure(value, own)
    return value


def every_rank(work: Callable[[], T]) -> T:
    """Run ``work`` on every rank; if it raises on any, every rank raises (the lowest failing
    rank's error is the one reported)."""
    if not is_distributed():
        return work()
    value, own, failure = None, None, None
    try:
        value = work()
    except Exception as err:  # noqa: BLE001 - told to every rank, then re-raised
        own, failure = err, failure_of(err)
    failures = [f for f in all_gather(failure) if f is not None]
    if failures:
        raise_shared_failure(failures[0], own)
    return value


def every_rank_gathered(work: Callable[[], tuple[T, Any]]) -> tuple[T, list[Any]]:
    """Run ``work`` on every rank; it returns (what this rank keeps, what it shares). Every rank
    gets its own kept value and every rank's shared value in rank order; if ``work`` raises on
    any rank, every rank raises (as ``every_rank``). One collective: the share travels with the
    failure report."""
    if not is_distributed():
        kept, shared = work()
        return kept, [shared]
    kept, own, sent = None, None, None
    try:
        kept, sent = work()
    except Exception as err:  # noqa: BLE001 - told to every rank, then re-raised
        own, sent = err, failure_of(err)
    parts = all_gather(sent)
    failures = [part for part in parts if isinstance(part, Failure)]
    if failures:
        raise_shared_failure(failures[0], own)
    return kept, parts  # type: ignore[return-value]


class SharedResult:
    """The main rank's result of work that the other ranks wait for.

    Off the main rank, ``receive`` waits for it. On the main rank, ``expect`` says that the
    others now wait: if the ``with`` block is left by an exception before ``send``, the failure
    is sent in place of the result, so the others raise instead of waiting forever.
    """

    def __init__(self) -> None:
        self._owed = False

    def __enter__(self) -> SharedResult:
        return self

    def __exit__(self, kind: object, err: BaseException | None, trace: object) -> None:
        if self._owed and err is not None:
            self._owed = False
            broadcast_from_main(failure_of(err))

    def expect(self) -> None:
        self._owed = is_distributed()

    def send(self, value: T, sent: Any = None) -> T:
        """Give ``sent`` (default: ``value``) to the waiting ranks; return ``value``."""
        if self._owed:
            self._owed = False
            broadcast_from_main(value if sent is None else sent)
        return value

    def receive(self) -> Any:
        value = broadcast_from_main(None)
        if isinstance(value, Failure):
            raise_shared_failure(value, None)
        return value
