"""The clean protocol's linear probe: L2-penalised logistic regression trained to convergence.

The objective ``mean cross-entropy + wd / 2 * ||W||^2`` (biases unpenalised) is strictly convex
for ``wd > 0``, so every grid value has one optimum and the grid chooses between genuinely
different probes. Full-batch L-BFGS with a strong-Wolfe line search reaches it in a few hundred
iterations on CPU; "converged" means the largest gradient entry at the end is below
``GRADIENT_TOLERANCE``. Grid values are fitted from the strongest penalty down, each starting
at the previous optimum (the same optima, fewer iterations). Deterministic in float32 on CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlmclf.analysis.probe.config import (
    ProbeConfig,
    TrainedProbe,
    identity_scaling,
    standardiser,
)

MAX_ITERATIONS = 1000
GRADIENT_TOLERANCE = 1e-3


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    weight_decay: float,
    *,
    init: nn.Linear | None = None,
    seed: int = 0,
) -> tuple[nn.Linear, dict[str, Any]]:
    """The penalised optimum on already-scaled ``x``, and how the fit went."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Linear(x.shape[1], n_classes)
    if init is not None:
        model.load_state_dict(init.state_dict())
    optimiser = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=MAX_ITERATIONS, tolerance_grad=GRADIENT_TOLERANCE / 10,
        tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip
    loss_fn = nn.CrossEntropyLoss()

    def objective() -> torch.Tensor:
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y) + 0.5 * weight_decay * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(objective)
    final = float(objective().detach())
    gradient = max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)
    iterations = int(optimiser.state[model.weight].get("n_iter", 0))
    model.requires_grad_(False)
    info = {"iterations": iterations, "objective": final, "max_gradient": gradient,
            "converged": gradient < GRADIENT_TOLERANCE}  # fmt: skip
    return model, info


def clean_linear(
    fit: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    train: tuple[torch.Tensor, torch.Tensor],
    n_classes: int,
    config: ProbeConfig,
) -> tuple[list[dict[str, Any]], dict[str, Any], TrainedProbe]:
    """(grid rows, the choice, the probe retrained on all of train with it)."""
    if any(wd <= 0 for wd in config.weight_decays):
        raise ValueError(
            "the clean protocol's linear probe needs weight decays > 0 (without a penalty the "
            f"optimum of separable data is at infinity); got {list(config.weight_decays)}"
        )
    mean, std = standardiser(fit[0]) if config.standardize else identity_scaling(fit[0])
    fit_x, val_x = (fit[0] - mean) / std, (val[0] - mean) / std
    rows: dict[float, dict[str, Any]] = {}
    previous = None
    for weight_decay in sorted(set(config.weight_decays), reverse=True):
        model, info = fit_logistic(fit_x, fit[1], n_classes, weight_decay, init=previous,
                                   seed=config.seed)  # fmt: skip
        accuracy = float((model(val_x).argmax(dim=1) == val[1]).float().mean())
        rows[weight_decay] = {"weight_decay": weight_decay, "val_accuracy": accuracy, **info}
        previous = model
    grid = [rows[wd] for wd in config.weight_decays]
    choice = max(grid, key=lambda row: row["val_accuracy"])  # first best in grid order
    mean, std = standardiser(train[0]) if config.standardize else identity_scaling(train[0])
    final, final_info = fit_logistic((train[0] - mean) / std, train[1], n_classes,
                                     choice["weight_decay"], seed=config.seed)  # fmt: skip
    chosen = {
        "epoch": None, "weight_decay": choice["weight_decay"],
        "val_accuracy": choice["val_accuracy"], "optimizer": "L-BFGS (full batch, to convergence)",
        "final_fit": final_info,
        "all_converged": all(row["converged"] for row in grid) and final_info["converged"],
    }  # fmt: skip
    return grid, chosen, TrainedProbe(final, mean, std, [])
