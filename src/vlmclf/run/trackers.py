"""A finished run's numbers sent to an experiment tracker (``--log tensorboard|wandb``).

The store stays the record; a tracker gets a copy of the summary so runs can be browsed beside
training curves. Both trackers get the same three things: every numeric headline (``eval/...``),
the accuracy of each class by the headline's containment rule, and the run's id, spec and
protocol. TensorBoard: one event file per run under ``DIR/tensorboard/<run_id>``, headlines and
per-class accuracies as scalars (step 0), spec and protocol as text. W&B: one run named by the
run id in ``$WANDB_PROJECT`` (default ``vlmclf``) and W&B's own entity, mode and key settings
(``WANDB_ENTITY``, ``WANDB_MODE``, ``WANDB_API_KEY``: W&B reads them, we never do), headlines
logged at step 0, per-class accuracy as a table, id, spec and protocol as its config; its local
files go under ``$WANDB_DIR``, else ``DIR``. The tracker's package is an optional extra,
checked before any work.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from vlmclf.metrics.columnar import per_class_accuracy_columns
from vlmclf.records import PredictionColumns
from vlmclf.run.results import StoredPredictions

TRACKERS = ("tensorboard", "wandb")
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}
"""The optional extra that installs each tracker, named as the package it imports."""
SCALARS = ("accuracy", "accuracy_all", "strict_accuracy", "top5", "balanced_accuracy",
           "macro_precision", "macro_recall", "macro_f1", "n", "n_failed")  # fmt: skip
WANDB_PROJECT = "vlmclf"
"""The W&B project when ``WANDB_PROJECT`` does not name one."""


def check_tracker(name: str) -> None:
    """ValueError (one line) for an unknown tracker or one whose package is not installed."""
    if name not in TRACKERS:
        raise ValueError(f"--log must be one of {', '.join(TRACKERS)}, got {name!r}")
    if importlib.util.find_spec(EXTRAS[name]) is None:
        raise ValueError(f"--log {name} needs the {EXTRAS[name]} package: "
                         f"pip install 'vlmclf[{name}]'")  # fmt: skip


def log_run(name: str, out_dir: Path, summary: dict[str, Any], stored: StoredPredictions) -> Path:
    """Send the run to tracker ``name``; returns where its local files are."""
    per_class = per_class_of(stored)
    if name == "wandb":
        return log_wandb(out_dir, summary, per_class)
    return log_tensorboard(out_dir, summary, per_class)


def scalars_of(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's headline numbers (and the CI bounds) as tracker scalars."""
    values = {f"eval/{key}": float(summary[key]) for key in SCALARS
              if isinstance(summary.get(key), (int, float))}  # fmt: skip
    ci = summary.get("ci95") or [None, None]
    for bound, value in zip(("ci95_low", "ci95_high"), ci, strict=True):
        if isinstance(value, (int, float)):
            values[f"eval/{bound}"] = float(value)
    return values


def per_class_of(stored: StoredPredictions) -> dict[str, float]:
    """Accuracy per class by the headline accuracy's rule (containment), one chunk of the
    stored run at a time (only the columns, never a score matrix, are kept)."""
    parts = []
    for chunk in stored.column_chunks():
        chunk.scores = None
        parts.append(chunk)
    columns = PredictionColumns.concat(parts, len(stored.class_names))
    return per_class_accuracy_columns(columns, stored.class_names, rule="contain")


def log_tensorboard(out_dir: Path, summary: dict[str, Any], per_class: dict[str, float]) -> Path:
    """Write the run's scalars and settings to ``out_dir/tensorboard/<run_id>``; returns it."""
    from torch.utils.tensorboard import SummaryWriter

    folder = out_dir / "tensorboard" / summary["run_id"]
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for tag, value in scalars_of(summary).items():
            writer.add_scalar(tag, value, global_step=0)
        for class_name, accuracy in per_class.items():
            writer.add_scalar(f"per_class/{class_name}", accuracy, global_step=0)
        writer.add_text("run/spec", json.dumps(summary.get("spec", {}), sort_keys=True), 0)
        writer.add_text("run/protocol", json.dumps(summary.get("protocol", {}), sort_keys=True), 0)
    finally:
        writer.close()
    return folder


def log_wandb(out_dir: Path, summary: dict[str, Any], per_class: dict[str, float]) -> Path:
    """Log the run to a new W&B run (see the module docstring); returns its local folder.
    W&B's errors (no API key, no server) become one-line ValueErrors."""
    import wandb

    local = None if os.environ.get("WANDB_DIR") else out_dir  # W&B's own setting wins
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)
    config = {"run_id": summary["run_id"], "spec": summary.get("spec", {}),
              "protocol": summary.get("protocol", {})}  # fmt: skip
    try:
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, name=summary["run_id"],
            job_type="eval", config=config, dir=None if local is None else str(local),
            reinit="create_new", settings=_wandb_settings(wandb),
        )  # fmt: skip
    except wandb.Error as err:
        raise ValueError(_first_line(err)) from err
    exit_code = 1
    try:
        rows = [[class_name, accuracy] for class_name, accuracy in per_class.items()]
        table = wandb.Table(columns=["class", "accuracy"], data=rows)
        run.log({**scalars_of(summary), "per_class": table}, step=0)
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)
    return Path(run.dir).parent


def _wandb_settings(wandb: Any) -> Any:
    """Only what the run needs: no console capture (our own output is the summary, on stdout),
    no system metrics (the run is over; they would describe the logging), few messages."""
    return wandb.Settings(console="off", x_disable_stats=True, quiet=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
