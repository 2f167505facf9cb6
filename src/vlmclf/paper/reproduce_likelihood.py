"""The likelihood rows of the paper's Table 2 from one stored run: sum and mean, top-1 and top-5,
and, under the paper protocol, every CFG weight of its grid with its dataset-mean prior.

Predictions keep every class name's token log-probs, so no model pass is repeated here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlmclf.methods.likelihood.scores import score_matrices
from vlmclf.paper.protocols import resolve
from vlmclf.paper.steps import Cells, Context
from vlmclf.store import RunStore


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the k best columns (NaN: a class not scored)."""
    if not len(labels):
        return 0.0
    filled = np.where(np.isnan(scores), -np.inf, scores)
    best = np.argsort(-filled, axis=1, kind="stable")[:, :k]
    return float((best == labels[:, None]).any(axis=1).mean())


def likelihood_table_cells(out: dict[str, Any], ctx: Context, dataset: str) -> Cells:
    """Cells (row, dataset) for the run ``out`` (an ``eval --json`` payload)."""
    with RunStore(Path(out["store"]), create=False) as runs:
        record = runs.get_run(out["run_id"])
        if record is None:
            raise ValueError(f"run {out['run_id']} is not in {out['store']}")
        predictions = runs.predictions(out["run_id"])
    settings = resolve(ctx.protocol, "likelihood")
    guided = settings.get("cfg_prior") == "dataset_mean"
    cells: Cells = {}
    for agg in settings.get("aggregates", ["sum"]):
        image, prior, labels = score_matrices(predictions, record.class_names, agg, "dataset_mean")
        cells[(f"likelihood {agg}, top-1", dataset)] = top_k_accuracy(image, labels, 1)
        cells[(f"likelihood {agg}, top-5", dataset)] = top_k_accuracy(image, labels, 5)
        if not guided:
            continue
        for t in settings.get("cfg_grid", []):
            combined = t * image + (1.0 - t) * prior
            cells[(f"likelihood {agg} + CFG t={t}, top-1", dataset)] = top_k_accuracy(
                combined, labels, 1
            )
    return cells
