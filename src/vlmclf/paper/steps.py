"""The vocabulary of ``reproduce``: what the user chose (``Context``), one command and how to
read its output (``Step``), a table of the paper as a list of steps (``Table``), and the cells
they fill. Kept apart so that the table readers (``reproduce_likelihood``) can use them."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAPER_DATASETS = ("imagenet", "flowers102", "stanford_cars", "caltech101")
Cells = dict[tuple[str, str], float | None]
Reader = Callable[[dict[str, Any], "Context"], Cells]


@dataclass(frozen=True)
class Context:
    """What the user chose: the model, where the data is, the protocol, sizes and hardware."""

    model: str
    data_root: str | None = None
    datasets: tuple[str, ...] = PAPER_DATASETS
    protocol: str = "paper"
    clip_model: str | None = None
    limit: int | None = None
    store: str | None = None
    device: str | None = None
    dtype: str | None = None
    corpus: tuple[str, ...] = ()
    wikiqa_images: str | None = None
    finetuned_model: str | None = None

    def root(self, dataset: str) -> str | None:
        """One dataset: ``--data-root`` is its folder; several: ``<data-root>/<name>``."""
        if self.data_root is None:
            return None
        return self.data_root if len(self.datasets) == 1 else str(Path(self.data_root) / dataset)


@dataclass(frozen=True)
class Step:
    """One command and the cells its JSON output fills."""

    argv: tuple[str, ...]
    read: Reader
    note: str = ""

    def shell(self) -> str:
        return shlex.join(["vlmclf", *self.argv])


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    layout: str  # what the rows and columns are, as the paper lays them out (our reading)
    build: Callable[[Context], list[Step]]
    value: str = "accuracy (%)"
    notes: tuple[str, ...] = field(default_factory=tuple)
    protocol: str | None = None  # a table that belongs to one protocol (the thesis's)
