"""What the demo derives from stored predictions without running a model again.

* Classifier-free guidance: a likelihood run stores every class name's per-token log-probs, so
  ``t * logp(c | image) + (1 - t) * prior(c)`` is a re-scoring. The guidance weight is chosen by
  *cross-fitting* on the evaluated images (each half is scored with the ``t`` that did best on
  the other half), so no image is scored with a weight chosen on its own label.
* Label-set size: a run that scored every class (CLIP, likelihood) answers the K-way question
  for any K by keeping the scores of K offered classes, drawn by ``sample_choices`` exactly as
  ``--k K`` draws them (same seed, same example id), so this equals a ``--k K`` run.
* Correctness aligned across runs by example id, for paired bootstraps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from vlmclf.data.choices import sample_choices, stable_seed
from vlmclf.methods.likelihood.scores import (
    Aggregate,
    Prior,
    best_index,
    dataset_mean_prior,
    rescore,
    sweep_cfg_predictions,
)
from vlmclf.metrics import correctness
from vlmclf.records import Prediction

N_FOLDS = 2


def fold_of(example_id: str, n_folds: int = N_FOLDS) -> int:
    """A fold from the example id alone (stable across runs and machines)."""
    return stable_seed(0, example_id) % n_folds


def crossfit_cfg(
    predictions: Sequence[Prediction],
    class_names: Sequence[str],
    grid: Sequence[float],
    *,
    agg: Aggregate = "sum",
    prior: Prior = "dataset_mean",
    n_folds: int = N_FOLDS,
) -> tuple[list[Prediction], list[float]]:
    """Predictions re-scored with guidance, each fold with the ``t`` chosen on the others; and
    the chosen ``t`` per fold. The ``dataset_mean`` prior (the paper code's) is each class's
    mean log-prob over all evaluated images: it uses no labels."""
    if prior == "dataset_mean":  # one prior for every fold, as the paper computes it
        shared = dataset_mean_prior(predictions)
        predictions = [
            replace(p, extra={**p.extra, "image_free": shared}) if p.ok else p for p in predictions
        ]
    folds = [fold_of(p.example_id, n_folds) for p in predictions]
    out: list[Prediction | None] = [None] * len(predictions)
    chosen = []
    for fold in range(n_folds):
        others = [p for p, f in zip(predictions, folds, strict=True) if f != fold]
        t = sweep_cfg_predictions(others, class_names, agg, grid, prior="image_free")
        chosen.append(t)
        mine = [i for i, f in enumerate(folds) if f == fold]
        rescored = rescore([predictions[i] for i in mine], class_names, agg, t, "image_free")
        for i, p in zip(mine, rescored, strict=True):
            out[i] = replace(p, extra={**p.extra, "prior": prior, "cfg_fold": fold})
    return [p for p in out if p is not None], chosen


def restrict_to_k(
    predictions: Sequence[Prediction], class_names: list[str], k: int, seed: int = 0
) -> list[Prediction]:
    """Each prediction re-decided among ``k`` offered classes (the ``--k k`` draw), top-1 of
    its stored per-class scores."""
    out = []
    for p in predictions:
        if not p.ok or p.scores is None:
            out.append(p)
            continue
        offered = set(sample_choices(p.label, class_names, k, "fixed", seed, p.example_id))
        scores = [s if i in offered else None for i, s in enumerate(p.scores)]
        pred = best_index(scores)
        hit = pred is not None and class_names[pred] == class_names[p.label]
        out.append(replace(p, scores=scores, pred=pred, hit=hit, choices=sorted(offered)))
    return out


def aligned_correctness(
    runs: Mapping[str, Sequence[Prediction]], class_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """0/1 correctness per run on the example ids every run answered, in id order."""
    per_run = {}
    for name, predictions in runs.items():
        ok = [p for p in predictions if p.ok]
        flags = correctness(ok, class_names, rule="contain")
        per_run[name] = dict(zip((p.example_id for p in ok), flags, strict=True))
    shared = sorted(set.intersection(*(set(d) for d in per_run.values())))
    return {name: np.array([d[i] for i in shared], dtype=np.float64) for name, d in per_run.items()}


def joint_bootstrap(
    columns: Mapping[str, np.ndarray],
    statistic: Callable[[Mapping[str, np.ndarray]], float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, list[float] | None]:
    """``statistic`` on the data and its 95% percentile interval, rows resampled jointly (the
    same images for every column, so per-image difficulty cancels). Resamples where the
    statistic is undefined (NaN) are dropped; None when all are."""
    n = len(next(iter(columns.values())))
    rng = np.random.default_rng(seed)
    value = float(statistic(columns))
    samples = []
    for _ in range(n_boot):
        rows = rng.integers(0, n, size=n)
        samples.append(statistic({name: col[rows] for name, col in columns.items()}))
    finite = np.asarray(samples, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return value, None
    return value, [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]

