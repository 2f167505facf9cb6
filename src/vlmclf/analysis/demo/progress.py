"""The demo's overall progress line: which step of how many, the time so far, and how long the
rest should take.

Each step is planned with its number of images and a rough relative cost per image; once a
step has finished, the estimate is the measured seconds per unit of cost times the units left,
so it adapts to the machine (and to steps whose predictions were already stored, which cost
nothing). Before the first step ends there is nothing to measure, and the line says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

COST_PER_IMAGE = {"clip": 1.0, "generate": 5.0, "likelihood": 4.0, "probe": 3.0}
"""Relative CPU cost of one image in each kind of step (the organism on 2 cores, rounded); only
the ratios matter: the measured rate rescales them."""


@dataclass(frozen=True)
class PlannedStep:
    message: str
    kind: str  # a key of COST_PER_IMAGE
    images: int

    @property
    def cost(self) -> float:
        return COST_PER_IMAGE[self.kind] * self.images


class StepClock:
    """Announces each planned step with the elapsed time and an estimate of the time left."""

    def __init__(
        self,
        plan: Sequence[PlannedStep],
        on_line: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan, self.on_line, self.clock = list(plan), on_line, clock
        self.started = clock()
        self.next = 0

    def start_next(self) -> PlannedStep:
        """Print the line of the next step and return it."""
        step = self.plan[self.next]
        elapsed = self.clock() - self.started
        self.on_line(
            f"[{self.next + 1}/{len(self.plan)}] {step.message} "
            f"(at {elapsed:.0f} s; {self._time_left(elapsed)})"
        )
        self.next += 1
        return step

    def finish(self) -> float:
        """Print the closing line; returns the total wall time in seconds."""
        elapsed = self.clock() - self.started
        self.on_line(f"[done] {len(self.plan)} steps in {elapsed:.0f} s")
        return elapsed

    def _time_left(self, elapsed: float) -> str:
        done = sum(step.cost for step in self.plan[: self.next])
        left = sum(step.cost for step in self.plan[self.next :])
        if done <= 0 or elapsed <= 0:
            return "time left: estimated after the first step"
        return f"about {_duration(elapsed / done * left)} left"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"
