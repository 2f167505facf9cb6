"""A finished run's numbers sent to an experiment tracker (``--log tensorboard``).

The store stays the record; a tracker gets a copy of the summary so runs can be browsed beside
training curves. TensorBoard: one event file per run under ``DIR/tensorboard/<run_id>``, every
numeric headline as a scalar (step 0) and the spec and protocol as text. The tracker's package
is an optional extra, checked before any work.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard",)
EXTRAS = {"tensorboard": "tensorboard"}
SCALARS = ("accuracy", "accuracy_all", "strict_accuracy", "top5", "balanced_accuracy",
           "macro_precision", "macro_recall", "macro_f1", "n", "n_failed")  # fmt: skip


def check_tracker(name: str) -> None:
    """ValueError (one line) for an unknown tracker or one whose package is not installed."""
    if name not in TRACKERS:
        raise ValueError(f"--log must be one of {', '.join(TRACKERS)}, got {name!r}")
    if importlib.util.find_spec(EXTRAS[name]) is None:
        raise ValueError(f"--log {name} needs the {EXTRAS[name]} package: "
                         f"pip install 'vlmclf[{name}]'")  # fmt: skip


def scalars_of(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's headline numbers (and the CI bounds) as tracker scalars."""
    values = {f"eval/{key}": float(summary[key]) for key in SCALARS
              if isinstance(summary.get(key), (int, float))}  # fmt: skip
    ci = summary.get("ci95") or [None, None]
    for bound, value in zip(("ci95_low", "ci95_high"), ci, strict=True):
        if isinstance(value, (int, float)):
            values[f"eval/{bound}"] = float(value)
    return values


def log_tensorboard(out_dir: Path, run_id: str, summary: dict[str, Any]) -> Path:
    """Write the run's scalars and settings to ``out_dir/tensorboard/<run_id>``; returns it."""
    from torch.utils.tensorboard import SummaryWriter

    folder = out_dir / "tensorboard" / run_id
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for tag, value in scalars_of(summary).items():
            writer.add_scalar(tag, value, global_step=0)
        writer.add_text("run/spec", json.dumps(summary.get("spec", {}), sort_keys=True), 0)
        writer.add_text("run/protocol", json.dumps(summary.get("protocol", {}), sort_keys=True), 0)
    finally:
        writer.close()
    return folder
