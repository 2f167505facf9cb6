"""Turning stored per-token log-probs into class scores, without the model.

A likelihood Prediction stores, per scored class name, the log-prob of every token
(``extra["token_logprobs"]``) and, with guidance, the same after the image-free prompt
(``extra["image_free"]``). Everything here is a function of those: the sum or mean aggregate,
classifier-free guidance ``t * image + (1 - t) * prior``, the original code's dataset-mean
calibration (the prior is the class's mean over the dataset's images) and choosing ``t`` on a
validation split.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Literal

import numpy as np

from vlmclf.records import Prediction

Aggregate = Literal["sum", "mean"]
Prior = Literal["image_free", "dataset_mean"]
DEFAULT_CFG_GRID: tuple[float, ...] = (0.0, 0.5, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0)


def aggregate(values: Sequence[float], agg: Aggregate) -> float:
    """The paper's two ways to turn token log-probs into one class score."""
    if agg == "sum":
        return math.fsum(values)
    if agg == "mean":
        return math.fsum(values) / len(values)
    raise ValueError(f"agg must be 'sum' or 'mean', got {agg!r}")


def guided(
    image: Sequence[float], prior: Sequence[float] | None, agg: Aggregate, t: float | None
) -> float:
    """``t * agg(image) + (1 - t) * agg(prior)``; the plain aggregate without guidance."""
    score = aggregate(image, agg)
    if t is None or prior is None:
        return score
    return t * score + (1.0 - t) * aggregate(prior, agg)


def class_scores(class_names: Sequence[str], named: Mapping[str, float]) -> list[float | None]:
    """Scores aligned with ``class_names`` (duplicates share their name's score, unscored: None)."""
    return [named.get(name) for name in class_names]


def best_index(scores: Sequence[float | None]) -> int | None:
    """The first index holding the highest score (a duplicated name resolves to its first index)."""
    best, best_score = None, -math.inf
    for i, score in enumerate(scores):
        if score is not None and score > best_score:
            best, best_score = i, score
    return best


class DatasetMeanPrior:
    """The dataset-mean prior built up chunk by chunk (a run too large to hold at once):
    ``add`` every chunk in order, then ``result``; the same floats as one pass over a list."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, predictions: Iterable[Prediction]) -> None:
        for p in predictions:
            if not p.ok:
                continue
            for name, values in p.extra.get("token_logprobs", {}).items():
                self.sums[name] = self.sums.get(name, 0.0) + np.asarray(values, dtype=np.float64)
                self.counts[name] = self.counts.get(name, 0) + 1

    def result(self) -> dict[str, list[float]]:
        return {name: (self.sums[name] / self.counts[name]).tolist() for name in self.sums}


def dataset_mean_prior(predictions: Iterable[Prediction]) -> dict[str, list[float]]:
    """Per class name, the mean per-token log-prob over every image it was scored for."""
    prior = DatasetMeanPrior()
    prior.add(predictions)
    return prior.result()


def rescore(
    predictions: Sequence[Prediction],
    class_names: Sequence[str],
    agg: Aggregate = "sum",
    t: float | None = None,
    prior: Prior = "image_free",
    shared_prior: dict[str, list[float]] | None = None,
) -> list[Prediction]:
    """New Predictions with ``scores``, ``pred`` and ``hit`` recomputed from the stored log-probs.

    ``prior="image_free"`` reads each prediction's ``extra["image_free"]`` (stored when the run
    used guidance); ``"dataset_mean"`` computes the class means over ``predictions`` themselves,
    or takes ``shared_prior`` (a whole run's, from ``DatasetMeanPrior``, to rescore a chunk).
    """
    shared = None
    if t is not None and prior == "dataset_mean":
        shared = shared_prior if shared_prior is not None else dataset_mean_prior(predictions)
    out = []
    for p in predictions:
        if not p.ok or "token_logprobs" not in p.extra:
            out.append(p)
            continue
        priors = shared if shared is not None else p.extra.get("image_free")
        if t is not None and priors is None:
            raise ValueError(f"{p.example_id}: no image-free log-probs stored; rerun with --cfg")
        named = {
            name: guided(values, priors.get(name) if priors else None, agg, t)
            for name, values in p.extra["token_logprobs"].items()
        }
        scores = class_scores(class_names, named)
        pred = best_index(scores)
        hit = pred is not None and class_names[pred] == class_names[p.label]
        extra = {**p.extra, "agg": agg, "cfg": t, "prior": prior if t is not None else None}
        out.append(replace(p, scores=scores, pred=pred, hit=hit, extra=extra))
    return out


def sweep_cfg(
    image_logps: np.ndarray,
    text_logps: np.ndarray,
    labels: Sequence[int],
    grid: Sequence[float] = DEFAULT_CFG_GRID,
) -> float:
    """The guidance weight ``t`` with the best top-1 accuracy on a validation split.

    ``image_logps`` (N, C) and ``text_logps`` (C,) or (N, C) are aggregated class scores
    (NaN where a class was not scored); ``labels`` (N,) index the columns. Ties go to the ``t``
    closest to 1 (the least guidance), then to the smaller one.
    """
    image = np.asarray(image_logps, dtype=np.float64)
    text = np.broadcast_to(np.asarray(text_logps, dtype=np.float64), image.shape)
    truth = np.asarray(labels, dtype=np.int64)
    if image.ndim != 2 or truth.shape != (image.shape[0],):
        raise ValueError(
            f"expected image_logps (N, C) and labels (N,), got {image.shape} and {truth.shape}"
        )
    if not len(grid):
        raise ValueError("the cfg grid is empty")
    best_t, best_key = None, None
    for t in grid:
        combined = np.where(np.isnan(image), -np.inf, t * image + (1.0 - t) * text)
        accuracy = float((combined.argmax(axis=1) == truth).mean()) if len(truth) else 0.0
        key = (accuracy, -abs(t - 1.0), -t)
        if best_key is None or key > best_key:
            best_t, best_key = float(t), key
    return best_t  # type: ignore[return-value]


def score_matrices(
    predictions: Sequence[Prediction], class_names: Sequence[str], agg: Aggregate, prior: Prior
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image scores, prior scores, canonical labels) over the distinct names, NaN if unscored."""
    names = list(dict.fromkeys(class_names))
    column = {name: j for j, name in enumerate(names)}
    kept = [p for p in predictions if p.ok and "token_logprobs" in p.extra]
    shared = dataset_mean_prior(kept) if prior == "dataset_mean" else None
    image = np.full((len(kept), len(names)), np.nan)
    text = np.full((len(kept), len(names)), np.nan)
    for i, p in enumerate(kept):
        priors = shared if shared is not None else p.extra.get("image_free")
        if priors is None:
            raise ValueError(f"{p.example_id}: no image-free log-probs stored; rerun with --cfg")
        for name, values in p.extra["token_logprobs"].items():
            image[i, column[name]] = aggregate(values, agg)
            text[i, column[name]] = aggregate(priors[name], agg)
    labels = np.array([column[class_names[p.label]] for p in kept], dtype=np.int64)
    return image, text, labels


def sweep_cfg_predictions(
    predictions: Sequence[Prediction],
    class_names: Sequence[str],
    agg: Aggregate = "sum",
    grid: Sequence[float] = DEFAULT_CFG_GRID,
    prior: Prior = "image_free",
) -> float:
    """``sweep_cfg`` on stored validation predictions; then ``rescore`` the test split with it."""
    image, text, labels = score_matrices(predictions, class_names, agg, prior)
    return sweep_cfg(image, text, labels, grid)
