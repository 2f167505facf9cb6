"""``vlmclf organism train vlm|clip``: train the organism's only trainable parts, on the CPU.

Frozen parts stay frozen. The data is Fashion-MNIST's training split; image features come from
the per-split disk cache. The output folder receives the weights, ``config.json`` and
``training_record.json`` (command, seed, data with per-class caption counts, loss curve, final
loss, wall time), which is what ships in ``src/vlmclf/organism/weights/``.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from vlmclf.organism.load import RECORD_FILE

LOSS_CURVE_POINTS = 50


def train_organism(
    kind: Literal["vlm", "clip"],
    out_dir: Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    freq: str | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Train ``kind`` into ``out_dir`` and return the training record (also written there).

    ``freq``: caption frequency per class, 'zipf', 'uniform' or a JSON file {class: weight};
    None means the kind's default ('zipf' for the VLM, 'uniform' for the CLIP). ``options`` go
    to ``train_vlm`` / ``train_clip`` (batch_size, lr, captions, data_root, ...).
    """
    out_dir = Path(out_dir)
    if kind == "vlm":
        from vlmclf.organism.train_vlm import train_vlm as trainer
    elif kind == "clip":
        from vlmclf.organism.train_clip import train_clip as trainer
    else:
        raise ValueError(f"unknown organism kind {kind!r}; use 'vlm' or 'clip'")
    log = _stderr_logger() if progress else _silent
    torch.manual_seed(seed)
    started = time.perf_counter()
    record = trainer(out_dir, seed=seed, steps=steps, freq=freq, log=log, **options)
    record = {
        "kind": kind,
        "command": command_line(kind, out_dir, seed, record["args"]["steps"], record["data"]),
        **record,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "environment": environment(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def command_line(kind: str, out_dir: Path, seed: int, steps: int, data: dict[str, Any]) -> str:
    freq = data["captions"]["freq"]
    return (
        f"vlmclf organism train {kind} --seed {seed} --steps {steps} --freq {freq} --out {out_dir}"
    )


def environment() -> dict[str, Any]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


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


def _stderr_logger() -> Callable[[str], None]:
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    return log


def _silent(message: str) -> None:
    del message
