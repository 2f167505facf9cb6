"""What both organism trainers share: the learning-rate schedule and the loss summary that goes
into each training record."""

from __future__ import annotations

import math
from typing import Any

LOSS_CURVE_POINTS = 50


def cosine_lr(step: int, total: int, peak: float, warmup_fraction: float = 0.03) -> float:
    """Linear warm-up then cosine decay to zero (LLaVA's stage-1 schedule)."""
    warmup = max(1, round(total * warmup_fraction)) if total > 10 else 0
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def loss_summary(losses: list[float]) -> dict[str, Any]:
    """First and final loss (mean of the last tenth of steps) and a curve of at most
    LOSS_CURVE_POINTS step-window means."""
    if not losses:
        raise ValueError("no training steps were run")
    window = max(1, math.ceil(len(losses) / LOSS_CURVE_POINTS))
    curve = [
        {"step": start + 1, "mean_loss": round(sum(chunk) / len(chunk), 5)}
        for start in range(0, len(losses), window)
        for chunk in [losses[start : start + window]]
    ]
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "first_step_loss": round(losses[0], 5),
        "last_step_loss": round(losses[-1], 5),
        "final_loss": round(sum(tail) / len(tail), 5),
        "final_loss_steps": len(tail),
        "curve_window": window,
        "curve": curve,
    }
