"""Linear (or one-hidden-layer) probes on frozen features, under two protocols.

* The paper's protocol (Section 4.1): Adam, lr 1e-3, batch 512, a fixed number of epochs, and the
  best epoch's accuracy on the evaluation split. Choosing the epoch on the data it is scored on
  is optimistic; every result says so in its label.
* A clean protocol: a stratified validation split carved from the training features chooses the
  weight decay; the probe is then retrained on all training features with that choice and
  scored on the evaluation split once. Weight decay is an L2 penalty ``wd / 2 * ||W||^2`` in
  the objective, and a linear probe is trained to convergence of that convex objective by
  full-batch L-BFGS (``convex.py``); each grid value is a distinct optimum, and the record says
  whether each converged. (Before, 50 Adam epochs of two batches each stopped far from any
  optimum, and AdamW's decoupled decay of ``lr * wd`` a step made every grid value the same
  probe.) An MLP probe has no unique optimum: it keeps Adam, early-stopped on validation, for
  at least ``min_steps`` optimiser steps.

How the probe is trained is set by ``ProbeConfig`` (resolved from ``--protocol``): by default
features are standardised with statistics of the data the probe is trained on and the training
rows are reshuffled each epoch; the paper's code trains on raw features in one order, shuffled
once with Python's ``random.seed(1234); random.shuffle(...)``. ``reported`` names which of the
two results is the headline. Everything runs in float32 on the CPU and is deterministic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from vlmclf.analysis.probe.config import (
    CLEAN_LABEL,
    PAPER_LABEL,
    ProbeConfig,
    TrainedProbe,
    identity_scaling,
    standardiser,
    training_order,
)
from vlmclf.analysis.probe.convex import clean_linear
from vlmclf.metrics import bootstrap_ci


def build_head(dim: int, n_classes: int, hidden: int | None) -> nn.Module:
    if hidden:
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
    return nn.Linear(dim, n_classes)


def l2_penalty(model: nn.Module, weight_decay: float) -> torch.Tensor | float:
    """``weight_decay / 2 * ||W||^2`` over the weight matrices (biases are not penalised)."""
    if weight_decay == 0:
        return 0.0
    squares = sum(p.pow(2).sum() for p in model.parameters() if p.dim() > 1)
    return 0.5 * weight_decay * squares


def train_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    *,
    epochs: int,
    config: ProbeConfig,
    weight_decay: float = 0.0,
    watch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainedProbe:
    """Train with Adam for ``epochs`` (weight decay as an L2 penalty in the objective; the
    paper's probe has none); when ``watch`` is given, its accuracy is recorded after every
    epoch."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    mean, std = standardiser(x) if config.standardize else identity_scaling(x)
    xs = (x - mean) / std
    watch_x = (watch[0] - mean) / std if watch is not None else None
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_head(x.shape[1], n_classes, config.mlp_hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    scores: list[float] = []
    best_predictions = None
    once = config.shuffle == "once"
    fixed = torch.tensor(training_order(xs.shape[0], config.shuffle_seed)) if once else None
    for _ in range(epochs):
        model.train()
        order = fixed if fixed is not None else torch.randperm(xs.shape[0], generator=generator)
        for start in range(0, xs.shape[0], config.batch_size):
            rows = order[start : start + config.batch_size]
            optimiser.zero_grad(set_to_none=True)
            (loss_fn(model(xs[rows]), y[rows]) + l2_penalty(model, weight_decay)).backward()
            optimiser.step()
        model.eval()
        if watch is not None and watch_x is not None:
            with torch.no_grad():
                predictions = model(watch_x).argmax(dim=1)
            scores.append(float((predictions == watch[1]).float().mean()))
            if scores[-1] > max(scores[:-1], default=-1.0):
                best_predictions = predictions
    return TrainedProbe(model, mean, std, scores, best_predictions)


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows): ``fraction`` of each class (at least one where the class
    has two or more examples) goes to validation."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.RandomState(seed)
    y = labels.numpy()
    train_rows, val_rows = [], []
    for cls in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == cls))
        n_val = int(round(len(rows) * fraction))
        n_val = min(max(n_val, 1 if len(rows) >= 2 else 0), len(rows) - 1)
        val_rows.append(rows[:n_val])
        train_rows.append(rows[n_val:])
    train, val = np.sort(np.concatenate(train_rows)), np.sort(np.concatenate(val_rows))
    if val.size == 0:
        raise ValueError("too few training examples to carve out a validation split")
    return train, val


def scored(correct: torch.Tensor, config: ProbeConfig) -> dict[str, Any]:
    """Accuracy, its CI, and per-example correctness as a "0"/"1" string (evaluation order:
    compact, and what paired comparisons with other methods need)."""
    flags = correct.float().numpy()
    low, high = bootstrap_ci(flags, n_boot=config.n_boot, seed=config.seed)
    bits = "".join("1" if flag else "0" for flag in flags)
    return {"accuracy": float(flags.mean()), "ci95": [low, high], "n_eval": int(flags.size),
            "correct": bits}  # fmt: skip


def clean_epochs(config: ProbeConfig, n_rows: int) -> int:
    """``config.epochs``, or more where that many epochs would be fewer than ``min_steps``."""
    per_epoch = -(-n_rows // config.batch_size)
    return max(config.epochs, -(-config.min_steps // per_epoch))


def paper_protocol(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    n_classes: int,
    config: ProbeConfig,
) -> dict[str, Any]:
    """Train for ``config.epochs``, watch test accuracy each epoch, report the best epoch's."""
    probe = train_probe(*train, n_classes, epochs=config.epochs, config=config, watch=test)
    best = int(np.argmax(probe.epoch_scores))
    assert probe.best_predictions is not None
    correct = probe.best_predictions == test[1]
    return {
        "protocol": "paper",
        "label": PAPER_LABEL,
        "selects_on_eval_data": True,
        **scored(correct, config),
        "final_epoch_accuracy": probe.epoch_scores[-1],
        "predicted": probe.best_predictions.tolist(),  # per example; run_probe keeps it apart
        "chosen": {"epoch": best + 1, "epochs_run": config.epochs, "optimizer": "Adam",
                   "lr": config.lr, "batch_size": config.batch_size, "weight_decay": 0.0},
        "n_train": int(train[1].numel()),
    }  # fmt: skip


def clean_protocol(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    n_classes: int,
    config: ProbeConfig,
) -> dict[str, Any]:
    """Choose the weight decay (and, for an MLP, the epochs) on a validation split of train;
    retrain on all of train with that choice; score the evaluation split once."""
    x, y = train
    fit_rows, val_rows = stratified_split(y, config.val_fraction, config.seed)
    fit = (x[fit_rows], y[fit_rows])
    val = (x[val_rows], y[val_rows])
    if config.mlp_hidden:
        grid, chosen, final = _clean_mlp(fit, val, train, n_classes, config)
    else:
        grid, chosen, final = clean_linear(fit, val, train, n_classes, config)
    predicted = final.predict(test[0])
    correct = predicted == test[1]
    return {
        "protocol": "clean",
        "label": CLEAN_LABEL,
        "selects_on_eval_data": False,
        **scored(correct, config),
        "predicted": predicted.tolist(),  # per example; run_probe keeps it apart
        "chosen": {**chosen, "penalty": "L2, weight_decay / 2 * ||W||^2",
                   "final_model": "retrained on all training examples with the chosen setting"},
        "grid": grid,
        "n_train": int(y.numel()),
        "n_fit": int(fit_rows.size),
        "n_val": int(val_rows.size),
    }  # fmt: skip


def _clean_mlp(
    fit: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    train: tuple[torch.Tensor, torch.Tensor],
    n_classes: int,
    config: ProbeConfig,
) -> tuple[list[dict[str, Any]], dict[str, Any], TrainedProbe]:
    """Adam for at least ``min_steps`` steps per grid value, early-stopped on validation."""
    epochs = clean_epochs(config, int(fit[1].numel()))
    grid = []
    for weight_decay in config.weight_decays:
        probe = train_probe(*fit, n_classes, epochs=epochs, config=config,
                            weight_decay=weight_decay, watch=val)  # fmt: skip
        best = int(np.argmax(probe.epoch_scores))
        grid.append({"weight_decay": weight_decay, "best_epoch": best + 1,
                     "val_accuracy": probe.epoch_scores[best]})  # fmt: skip
    choice = max(grid, key=lambda row: row["val_accuracy"])  # first best: smallest decay wins ties
    final = train_probe(*train, n_classes, epochs=choice["best_epoch"], config=config,
                        weight_decay=choice["weight_decay"])  # fmt: skip
    chosen = {"epoch": choice["best_epoch"], "weight_decay": choice["weight_decay"],
              "val_accuracy": choice["val_accuracy"], "optimizer": "Adam", "lr": config.lr,
              "batch_size": config.batch_size, "epochs_run": epochs,
              "min_steps": config.min_steps}  # fmt: skip
    return grid, chosen, final


def probe_both_protocols(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    n_classes: int,
    config: ProbeConfig,
) -> dict[str, dict[str, Any]]:
    """{"paper": ..., "clean": ...} for one kind of features."""
    return {
        "paper": paper_protocol(train, test, n_classes, config),
        "clean": clean_protocol(train, test, n_classes, config),
    }
