"""Watching a fine-tuning run: the learning-rate schedule, the per-step loss log and its plot,
and the guard that stops a diverging run with a report instead of letting it go on silently."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vlmclf.report.cells import csv_row

Schedule = Literal["cosine", "linear"]
LOG_FIELDS = ("step", "loss", "lr_projector", "lr_lora", "grad_norm", "tokens", "examples",
              "skipped_images", "seconds")  # fmt: skip


def warmup_steps(total: int, warmup_ratio: float) -> int:
    return max(1, math.ceil(total * warmup_ratio)) if warmup_ratio > 0 else 0


def lr_factor(step: int, total: int, warmup: int, schedule: Schedule) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based): linear warm-up
    over ``warmup`` steps, then cosine or linear decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class DivergenceReport:
    """Why a run was stopped, at which step, and what to try."""

    reason: str
    step: int
    loss: float
    lrs: dict[str, float]
    median: float | None = None
    factor: float | None = None
    suggestions: list[str] = field(default_factory=list)

    def message(self) -> str:
        lrs = ", ".join(f"{name} {value:.3g}" for name, value in self.lrs.items())
        lines = [f"training stopped at step {self.step}: {self.reason}",
                 f"  loss {self.loss:.6g}; learning rates: {lrs}"]  # fmt: skip
        if self.median is not None:
            lines.append(f"  running median {self.median:.6g}, spike factor {self.factor}")
        lines.append("  the weights were not updated with this step; no checkpoint was written")
        lines += [f"  try: {tip}" for tip in self.suggestions]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "message": self.message()}


class TrainingDiverged(RuntimeError):
    """Raised by the guard; carries the report (also written next to the loss log)."""

    def __init__(self, report: DivergenceReport, report_path: Path | None = None):
        super().__init__(report.message())
        self.report = report
        self.report_path = report_path
        self.analysis_id: str | None = None  # the stored "diverged" analysis, once stored


SUGGESTIONS = [
    "lower the learning rates (--lr-projector, --lr-lora), e.g. by 10x",
    "lengthen the warm-up (--warmup-ratio) or lower --max-grad-norm",
    "use float32 or bfloat16 rather than float16 (--dtype)",
    "check the data around this step (the log lists tokens and skipped images per step)",
]


class DivergenceGuard:
    """Stop on a NaN/inf loss or gradient norm, or, after warm-up and ``min_history`` steps, on a
    loss above ``spike_factor`` x the median of the last ``window`` losses or a gradient norm
    above ``grad_spike_factor`` x the median of the last ``window`` norms (an exploding update
    can leave the loss flat while it wrecks the weights). A factor of 0 disables its rule;
    NaN/inf always stop."""

    def __init__(
        self,
        warmup: int,
        spike_factor: float = 5.0,
        window: int = 50,
        min_history: int = 10,
        grad_spike_factor: float = 100.0,
    ):
        self.warmup = warmup
        self.spike_factor = spike_factor
        self.grad_spike_factor = grad_spike_factor
        self.losses: deque[float] = deque(maxlen=window)
        self.grad_norms: deque[float] = deque(maxlen=window)
        self.min_history = min_history

    def check_loss(self, step: int, loss: float, lrs: dict[str, float]) -> DivergenceReport | None:
        if not math.isfinite(loss):
            kind = "NaN" if math.isnan(loss) else "infinite"
            return DivergenceReport(f"the loss is {kind}", step, loss, lrs, suggestions=SUGGESTIONS)
        median = self._spike(step, loss, self.losses, self.spike_factor)
        self.losses.append(loss)
        if median is None:
            return None
        return DivergenceReport(
            f"loss spike: {loss:.4g} > {self.spike_factor} x the running median {median:.4g}",
            step, loss, lrs, median=median, factor=self.spike_factor, suggestions=SUGGESTIONS,
        )  # fmt: skip

    def check_grad(
        self, step: int, loss: float, grad_norm: float, lrs: dict[str, float]
    ) -> DivergenceReport | None:
        if not math.isfinite(grad_norm):
            return DivergenceReport(f"the gradient norm is {grad_norm}", step, loss, lrs,
                                    suggestions=SUGGESTIONS)  # fmt: skip
        median = self._spike(step, grad_norm, self.grad_norms, self.grad_spike_factor)
        self.grad_norms.append(grad_norm)
        if median is None:
            return None
        return DivergenceReport(
            f"gradient-norm spike: {grad_norm:.4g} > {self.grad_spike_factor} x the running "
            f"median {median:.4g}",
            step, loss, lrs, median=median, factor=self.grad_spike_factor, suggestions=SUGGESTIONS,
        )  # fmt: skip

    def _spike(self, step: int, value: float, history: deque[float], factor: float) -> float | None:
        if factor <= 0 or step <= self.warmup or len(history) < self.min_history:
            return None
        median = statistics.median(history)
        return median if value > factor * median else None


class LossLog:
    """Per-step rows appended to ``train_log.csv`` (flushed each step, so a crash keeps them)."""

    def __init__(self, path: Path | None):
        """``path`` None: rows kept in memory only (a torchrun rank other than the main one)."""
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=LOG_FIELDS)
            self._writer.writeheader()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self._file is not None:
            self._writer.writerow(csv_row({k: row.get(k) for k in LOG_FIELDS}))
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def losses(self) -> list[float]:
        return [float(row["loss"]) for row in self.rows]


def write_divergence_report(report: DivergenceReport, out_dir: Path) -> Path:
    path = out_dir / "divergence.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
    return path


def plot_loss_curve(
    rows: list[dict[str, Any]], path: Path, title: str, stopped: DivergenceReport | None = None
) -> Path:
    """Loss per step (and a moving average), the learning rate on a second axis, and the step
    where the guard stopped the run if it did."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    steps = [row["step"] for row in rows]
    losses = [row["loss"] for row in rows]
    finite = [(s, v) for s, v in zip(steps, losses, strict=True) if math.isfinite(v)]
    if finite:
        ax.plot(*zip(*finite, strict=True), color="#9db4d6", lw=1, label="loss per step")
        window = max(1, len(finite) // 20)
        smooth = [statistics.fmean(v for _, v in finite[max(0, i - window + 1) : i + 1])
                  for i in range(len(finite))]  # fmt: skip
        ax.plot([s for s, _ in finite], smooth, color="#1f4e96", lw=2, label=f"mean of {window}")
    if stopped is not None:
        ax.axvline(stopped.step, color="#c44e52", ls="--", label=f"stopped: {stopped.reason[:40]}")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("answer-token cross-entropy")
    ax.set_title(title, fontsize=10)
    if rows:
        lr_axis = ax.twinx()
        lr_axis.plot(steps, [row["lr_projector"] for row in rows], color="#999999", lw=1, ls=":")
        lr_axis.set_ylabel("projector lr (dotted)", color="#777777")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
