"""A torchrun rank stops when its launcher dies.

torchrun starts each rank in a session of its own, so killing the launcher (``kill -KILL``, an
OOM kill, a node agent that died) leaves the ranks reparented to PID 1, still computing and
writing the store, possibly side by side with a relaunch. Each rank therefore asks to receive
SIGTERM when its parent dies: ``prctl(PR_SET_PDEATHSIG)`` on Linux, and elsewhere a daemon
thread that watches ``os.getppid()`` once a second. SIGTERM takes the run's interruption path
(``vlmclf.run.interrupts``): the batch in flight is dropped, committed rows stay, the run is
marked ``interrupted`` and a relaunch resumes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 1.0
_armed = False


def stop_with_launcher(signum: int = signal.SIGTERM) -> str | None:
    """Arrange for ``signum`` when this process's parent dies; once per process. Returns how
    ("prctl", "watch") or None where it was already arranged."""
    global _armed
    if _armed:
        return None
    _armed = True
    parent = os.getppid()
    how = "prctl" if _parent_death_signal(signum) else _watch_parent(parent, signum)
    if os.getppid() != parent:  # the launcher died before the arrangement took hold
        os.kill(os.getpid(), signum)
    return how


def _parent_death_signal(signum: int) -> bool:
    """Linux's parent-death signal; False where there is none (or the call fails)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, signum: int) -> str:
    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(WATCH_INTERVAL_S)
        os.kill(os.getpid(), signum)

    threading.Thread(target=watch, name="vlmclf-launcher-watch", daemon=True).start()
    return "watch"
