"""How a probe is trained and what training leaves: ``ProbeConfig`` (resolved from
``--protocol``), the trained probe, the row order and the feature scaling both trainers share
(``train.py`` for Adam, ``convex.py`` for L-BFGS)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PAPER_LABEL = "paper protocol (selects the epoch on the evaluation data: optimistic)"
CLEAN_LABEL = (
    "clean protocol (weight decay and epochs chosen on a validation split carved from train; "
    "retrained on all of train; evaluation split scored once)"
)
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
MIN_STEPS = 2000
SHUFFLES = ("each-epoch", "once")
REPORTED = {"validation": "clean", "best-test-epoch": "paper"}
"""The reporting rule -> the result it reports."""


@dataclass(frozen=True)
class ProbeConfig:
    """How probes are trained and reported. The defaults are the clean protocol's; the paper's
    (``--protocol paper``, ``data/protocols/paper.json``) are raw features, one order shuffled
    with seed 1234, 500 epochs (100 for ImageNet) and the best test epoch reported."""

    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 512
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS
    val_fraction: float = 0.2
    mlp_hidden: int | None = None
    seed: int = 0
    n_boot: int = 1000
    standardize: bool = True
    shuffle: str = "each-epoch"  # or "once": one order for every epoch (the paper's code)
    shuffle_seed: int = 1234  # the seed of Python's random.shuffle when shuffle is "once"
    reported: str = "validation"  # or "best-test-epoch" (the paper's rule); see REPORTED
    min_steps: int = MIN_STEPS  # the clean protocol's least number of optimiser steps

    def __post_init__(self) -> None:
        if self.shuffle not in SHUFFLES:
            raise ValueError(
                f"--shuffle must be one of {', '.join(SHUFFLES)}, got {self.shuffle!r}"
            )
        if self.reported not in REPORTED:
            raise ValueError(
                f"--reported must be one of {', '.join(REPORTED)}, got {self.reported!r}"
            )

    def head(self) -> str:
        return f"mlp({self.mlp_hidden})" if self.mlp_hidden else "linear"


@dataclass
class TrainedProbe:
    model: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    epoch_scores: list[float]
    """Accuracy on the watched split after each epoch (empty when nothing was watched)."""
    best_predictions: torch.Tensor | None = None
    """Predictions on the watched split at its best epoch (the first best)."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model((x - self.mean) / self.std).argmax(dim=1)


def training_order(n: int, seed: int) -> list[int]:
    """Row order shuffled once, exactly as the paper's code does it: Python's
    ``random.seed(seed); random.shuffle(rows)``."""
    import random

    rows = list(range(n))
    random.Random(seed).shuffle(rows)
    return rows


def identity_scaling(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features: mean 0, std 1 leave them as they are."""
    return torch.zeros(x.shape[1], dtype=x.dtype), torch.ones(x.shape[1], dtype=x.dtype)


def standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per feature; constant features get std 1 (they carry nothing)."""
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))
