"""SIGTERM as an interruption: a job scheduler (Slurm, Kubernetes, `timeout`) stops a run with
SIGTERM, and Python's default is to die on the spot, leaving the run marked `running` forever.
Turned into ``Terminated`` (a KeyboardInterrupt), it takes the same path as Ctrl-C: the batch in
flight is rolled back, every committed row stays, and the run is marked `interrupted`."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM while a run was in progress."""


@contextmanager
def sigterm_raises_terminated() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` in the main thread; the previous handler
    comes back afterwards. Outside the main thread (where Python cannot set handlers) this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated("terminated by SIGTERM")


def is_interruption(err: BaseException) -> bool:
    """Ctrl-C, SIGTERM or a full disk: the run stopped for a reason outside it, every committed
    row is good, and re-running resumes; anything else marks the run failed."""
    return isinstance(err, KeyboardInterrupt) or bool(getattr(err, "disk_full", False))


def mark_interrupted(finish: Callable[[], None], on_failure: Callable[[str], None]) -> None:
    """Run ``finish`` (which marks a run interrupted); if the store cannot take even that write,
    report it through ``on_failure`` instead of hiding the first error. A full disk needs no
    report: the run's lease dies with this store object, so readers show it ``interrupted``
    anyway (``vlmclf.store.leases``), and the error that stopped the run says the rest."""
    from vlmclf.store import StoreError

    try:
        finish()
    except StoreError as err:
        if not err.disk_full:
            on_failure(f"could not mark the run interrupted: {err}")
