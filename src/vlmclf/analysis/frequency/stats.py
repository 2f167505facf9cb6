"""Relating class-name frequency to per-class accuracy: correlation, bins, plot and tables.

Counts are heavy-tailed (a few classes appear in 10^4 captions, many in none), so the linear
correlation is taken on log(1 + count) and the rank correlation (Spearman) is the headline.
Confidence intervals come from a bootstrap over classes. For the paper's Figure 3 the classes are
put in frequency bins and the mean accuracy per bin is plotted; the bins are *quantile* bins
(about the same number of classes each) by default because log-spaced bins on such data leave most
bins nearly empty (ties never straddle two bins); ``scheme="log"`` gives log-spaced bins on
1 + count instead, and ``scheme="paper"`` the paper's fixed edges (``PAPER_BIN_EDGES``). The
paper's own correlation is Pearson on raw counts, reported beside the log one (``pearson_raw``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from vlmclf.report.cells import csv_cell, markdown_cell

MIN_CLASSES = 3
BIN_SCHEMES = ("quantile", "log", "paper")
PAPER_BIN_EDGES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 1000, 10000, 100000)
"""Figure 3's bins, each [lo, hi); the paper's code leaves counts of 100000 or more out."""


def _aligned(
    counts: Mapping[str, int], per_class_accuracy: Mapping[str, float]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Classes present in both mappings, with their counts and accuracies as arrays."""
    names = [n for n in counts if n in per_class_accuracy]
    acc = np.array([float(per_class_accuracy[n]) for n in names], dtype=np.float64)
    cnt = np.array([int(counts[n]) for n in names], dtype=np.float64)
    if len(names) < MIN_CLASSES:
        raise ValueError(
            f"need at least {MIN_CLASSES} classes with both a count and an accuracy, got "
            f"{len(names)} (check that accuracy keys are the same class names as the counts)"
        )
    if not np.all(np.isfinite(acc)):
        bad = [n for n, a in zip(names, acc, strict=True) if not math.isfinite(a)]
        raise ValueError(f"per-class accuracy is not finite for {bad[:5]}")
    if np.any(cnt < 0):
        raise ValueError("class counts must be non-negative")
    return names, cnt, acc


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair; NaN where a row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(axis=1) / denom


def _ci(samples: np.ndarray) -> list[float] | None:
    ok = samples[np.isfinite(samples)]
    if ok.size == 0:
        return None
    return [float(np.percentile(ok, 2.5)), float(np.percentile(ok, 97.5))]


def correlate(
    counts: Mapping[str, int],
    per_class_accuracy: Mapping[str, float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Spearman (count), Pearson on log(1+count) and Pearson on raw counts (the paper's) against
    accuracy, with p-values and bootstrap 95% CIs.

    Classes in only one of the two mappings are left out; ``n_classes`` says how many were used.
    A correlation that is undefined (all counts or all accuracies equal) is reported as None.
    """
    _, cnt, acc = _aligned(counts, per_class_accuracy)
    log_cnt = np.log1p(cnt)
    constant = np.ptp(cnt) == 0 or np.ptp(acc) == 0
    if constant:
        rho = p_rho = r = p_r = raw = p_raw = math.nan
    else:
        rho, p_rho = stats.spearmanr(cnt, acc)
        r, p_r = stats.pearsonr(log_cnt, acc)
        raw, p_raw = stats.pearsonr(cnt, acc)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cnt.size, size=(n_boot, cnt.size))
    boot_r = _rowwise_pearson(log_cnt[idx], acc[idx])
    boot_raw = _rowwise_pearson(cnt[idx], acc[idx])
    boot_rho = _rowwise_pearson(stats.rankdata(cnt[idx], axis=1), stats.rankdata(acc[idx], axis=1))
    return {
        "n_classes": int(cnt.size),
        "spearman": _finite_or_none(rho),
        "spearman_p": _finite_or_none(p_rho),
        "spearman_ci95": None if constant else _ci(boot_rho),
        "pearson_log1p": _finite_or_none(r),
        "pearson_log1p_p": _finite_or_none(p_r),
        "pearson_log1p_ci95": None if constant else _ci(boot_r),
        "pearson_raw": _finite_or_none(raw),
        "pearson_raw_p": _finite_or_none(p_raw),
        "pearson_raw_ci95": None if constant else _ci(boot_raw),
        "n_boot": int(n_boot),
        "seed": int(seed),
    }


def _quantile_bin_ids(cnt: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal shares of the classes in count order; a run of tied counts joins its first bin."""
    order = np.argsort(cnt, kind="stable")
    target = (np.arange(cnt.size) * n_bins) // cnt.size
    sorted_cnt = cnt[order]
    first_of_tie = np.searchsorted(sorted_cnt, sorted_cnt, side="left")
    ids = np.empty(cnt.size, dtype=np.int64)
    ids[order] = target[first_of_tie]
    return ids


def _log_bin_ids(cnt: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal widths on log(1 + count), closed on the right (the first bin holds the minimum)."""
    edges = np.unique(np.linspace(np.log1p(cnt.min()), np.log1p(cnt.max()), n_bins + 1))
    which = np.searchsorted(edges, np.log1p(cnt), side="left") - 1
    return np.clip(which, 0, max(len(edges) - 2, 0))


def _paper_bin_ids(cnt: np.ndarray) -> np.ndarray:
    """Index of the [lo, hi) paper bin holding each count; -1 beyond the last edge."""
    edges = np.asarray(PAPER_BIN_EDGES)
    which = np.searchsorted(edges, cnt, side="right") - 1
    return np.where((cnt >= edges[0]) & (cnt < edges[-1]), which, -1)


def binned_accuracy(
    counts: Mapping[str, int],
    per_class_accuracy: Mapping[str, float],
    n_bins: int = 10,
    *,
    scheme: str = "quantile",
) -> list[dict[str, Any]]:
    """Mean accuracy of the classes in each frequency bin, lowest frequencies first.

    ``quantile``: classes sorted by count are cut into ``n_bins`` equal shares, and a run of equal
    counts stays whole in the bin where it starts, so that (say) all never-mentioned classes form
    one bin; fewer than ``n_bins`` bins come back when ties swallow a share. ``log``: equal widths
    on log(1 + count). ``paper``: Figure 3's fixed edges (``n_bins`` unused), each bin with its
    ``edges`` [lo, hi); counts of 100000 or more fall in no bin, as in the paper's code. Empty
    bins are left out.
    Each bin: lo/hi (the smallest and largest count in it), n_classes, median_count,
    mean_accuracy and sem_accuracy (standard error of the mean; 0 for a single class).
    """
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    _, cnt, acc = _aligned(counts, per_class_accuracy)
    if scheme == "quantile":
        which = _quantile_bin_ids(cnt, n_bins)
    elif scheme == "log":
        which = _log_bin_ids(cnt, n_bins)
    elif scheme == "paper":
        which = _paper_bin_ids(cnt)
    else:
        raise ValueError(f"unknown binning scheme {scheme!r}; use one of {', '.join(BIN_SCHEMES)}")
    bins = []
    for b in np.unique(which[which >= 0]):
        member = which == b
        a = acc[member]
        sem = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else 0.0
        bins.append(
            {
                "bin": len(bins),
                "lo": int(cnt[member].min()),
                "hi": int(cnt[member].max()),
                "n_classes": int(member.sum()),
                "median_count": float(np.median(cnt[member])),
                "mean_accuracy": float(a.mean()),
                "sem_accuracy": sem,
            }
        )
        if scheme == "paper":
            bins[-1]["edges"] = [PAPER_BIN_EDGES[b], PAPER_BIN_EDGES[b + 1]]
    return bins


def plot_frequency_vs_accuracy(
    bins: Sequence[Mapping[str, Any]], out_png: Path, title: str
) -> Path:
    """Mean accuracy per frequency bin (error bars: SEM), like the paper's Figure 3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not bins:
        raise ValueError("no bins to plot")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    x = np.arange(len(bins))
    labels = [f"{b['lo']}" if b["lo"] == b["hi"] else f"{b['lo']}-{b['hi']}" for b in bins]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(bins) + 2), 3.6))
    try:
        ax.errorbar(
            x,
            [b["mean_accuracy"] for b in bins],
            yerr=[b["sem_accuracy"] for b in bins],
            marker="o",
            capsize=3,
        )
        for xi, b in zip(x, bins, strict=True):
            ax.annotate(
                f"n={b['n_classes']}",
                (xi, b["mean_accuracy"]),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=7,
            )
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("units mentioning the class (bin range)")
        ax.set_ylabel("mean per-class accuracy")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_png, dpi=120)
    finally:
        plt.close(fig)
    return out_png


def _table_rows(
    counts: Mapping[str, int], per_class_accuracy: Mapping[str, float] | None
) -> list[tuple[str, int, float | None]]:
    rows = [
        (name, int(c), None if per_class_accuracy is None else per_class_accuracy.get(name))
        for name, c in counts.items()
    ]
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def write_frequency_table(
    counts: Mapping[str, int],
    per_class_accuracy: Mapping[str, float] | None,
    out_md: Path,
    out_csv: Path,
) -> None:
    """Write class, count, accuracy (blank when unknown), most frequent first, as Markdown + CSV."""
    rows = _table_rows(counts, per_class_accuracy)
    for path in (Path(out_md), Path(out_csv)):
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "count", "accuracy"])
        for name, c, a in rows:
            writer.writerow([csv_cell(name), c, "" if a is None else f"{float(a):.6g}"])
    lines = ["| class | count | accuracy |", "|---|---:|---:|"]
    for name, c, a in rows:
        lines.append(f"| {markdown_cell(name)} | {c} | {'' if a is None else f'{float(a):.4f}'} |")
    Path(out_md).write_text("\n".join(lines) + "\n", encoding="utf-8")
