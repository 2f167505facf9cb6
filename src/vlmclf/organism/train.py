"""``vlmclf organism train vlm|clip``: train the organism's only trainable parts, on the CPU.

Frozen parts stay frozen. The data is Fashion-MNIST's training split; image features come from
the per-split disk cache. The output folder receives the weights, ``config.json`` and
``training_record.json`` (command, seed, data with per-class caption counts, loss curve, final
loss, wall time), which is what ships in ``src/vlmclf/organism/weights/``.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from vlmclf.organism.load import RECORD_FILE
from vlmclf.organism.train_clip import train_clip
from vlmclf.organism.train_vlm import train_vlm


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
    trainers = {"vlm": train_vlm, "clip": train_clip}
    if kind not in trainers:
        raise ValueError(f"unknown organism kind {kind!r}; use 'vlm' or 'clip'")
    trainer = trainers[kind]
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


def _stderr_logger() -> Callable[[str], None]:
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    return log


def _silent(message: str) -> None:
    del message
