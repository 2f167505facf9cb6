"""What every method is: a function from a batch of decoded examples to Predictions.

Methods never open the store and never print; the runner persists their records and reports
progress. Anything a user should be warned about before the run starts comes from ``preflight``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from vlmclf.data.types import Example
from vlmclf.records import Prediction


@dataclass(frozen=True)
class LoadedExample:
    """An example whose image decoded successfully."""

    example: Example
    image: Image.Image


class Method(Protocol):
    def preflight(self) -> list[str]:
        """Warnings worth printing before the run (e.g. prompts longer than the context)."""
        ...

    def predict(self, batch: list[LoadedExample]) -> list[Prediction]:
        """One Prediction per example, in batch order."""
        ...
