"""Tables and figures of a sweep (``analysis/sweep/run.py``), laid out like the paper's.

* ``sweep_long.{md,csv}``: one row per cell (model, dataset, every axis, accuracy, 95% CI, n).
* ``sweep_by_<axis>.{md,csv}`` for every swept axis: rows are model x dataset x the other swept
  axes, columns the axis's values, cells accuracy in percent (Table 7's layout).
* With a K axis: ``sweep_accuracy_vs_k.png`` (Figure 2: accuracy against label-set size, one
  panel per dataset, one line per model and setting, chance 1/K dashed) and the relative error
  rate ``sweep_relative_error.{md,csv}`` / ``sweep_relative_error_vs_k.png`` (Figure 4's view).
* With other axes swept: ``sweep_axes.png``, accuracy bars per axis value and model.

Relative error rate (defined here; the paper plots error growth against K): for a series (one
model, dataset and setting of the other axes), ``rel_err(K) = (1 - acc(K)) / (1 - acc(K0))``
with K0 the smallest K swept, so 1.0 at K0 and e.g. 3.0 where three times as many images are
misclassified. It is None where the K0 error is 0. ``all`` sits at x = the number of distinct
classes; ``open`` has no K and appears in the tables only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmclf.report.tables import csv_table, markdown_table

AXES = ("k", "prompt", "order", "cot", "strategy", "choices")


def write_sweep_report(
    rows: list[dict[str, Any]], axes: dict[str, list[str]], distinct: dict[str, int | None],
    out_dir: Path,
) -> dict[str, str]:  # fmt: skip
    """Write every table and figure; return {name: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    swept = [a for a in AXES if a in axes]
    files: dict[str, Path] = {}
    long = [_long_row(r) for r in rows]
    files |= _write_table(long, out_dir / "sweep_long", "long")
    for axis in swept:
        table = pivot(rows, axis, axes[axis], swept, _percent)
        files |= _write_table(table, out_dir / f"sweep_by_{axis}", f"by_{axis}")
    ks = [k for k in axes.get("k", []) if k != "open"]
    if len(ks) >= 2:
        series = k_series(rows, ks, swept, distinct)
        rel = [{**s["key"], **{f"K={k}": v for k, v in zip(ks, s["relative_error"], strict=True)}}
               for s in series]  # fmt: skip
        files |= _write_table(rel, out_dir / "sweep_relative_error", "relative_error")
        files["figure_accuracy_vs_k"] = plot_k_series(
            series, out_dir / "sweep_accuracy_vs_k.png", relative=False
        )
        files["figure_relative_error"] = plot_k_series(
            series, out_dir / "sweep_relative_error_vs_k.png", relative=True
        )
    others = [a for a in swept if a != "k"] or ([] if ks else ["strategy"])
    if others:
        files["figure_axes"] = plot_axes(rows, others, axes, out_dir / "sweep_axes.png")
    return {name: str(path) for name, path in files.items()}


def _write_table(table: list[dict[str, Any]], stem: Path, name: str) -> dict[str, Path]:
    if not table:
        return {}
    md, csv = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.write_text(markdown_table(table) + "\n", encoding="utf-8")
    csv.write_text(csv_table(table), encoding="utf-8")
    return {f"table_{name}": md, f"csv_{name}": csv}


def _long_row(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "dataset", *AXES, "accuracy", "ci_low", "ci_high", "strict_accuracy", "n",
            "n_failed", "run_id", "error")  # fmt: skip
    return {k: row.get(k) for k in keys}


def _percent(row: dict[str, Any]) -> str:
    if row.get("error"):
        return "error"
    return "-" if row.get("accuracy") is None else f"{100 * row['accuracy']:.1f}"


def pivot(
    rows: list[dict[str, Any]], axis: str, values: Sequence[str], swept: Sequence[str], cell: Any
) -> list[dict[str, Any]]:
    """Rows keyed by model, dataset and the other swept axes; one column per value of ``axis``."""
    others = [a for a in swept if a != axis]
    table: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["model"], row["dataset"], *(row[a] for a in others))
        entry = table.setdefault(key, {"model": row["model"], "dataset": row["dataset"],
                                       **{a: row[a] for a in others}})  # fmt: skip
        entry[f"{axis}={row[axis]}"] = cell(row)
    columns = [f"{axis}={v}" for v in values]
    return [{**{k: v for k, v in e.items() if k not in columns}, **{c: e.get(c) for c in columns}}
            for e in table.values()]  # fmt: skip


def k_position(k: str, ks: Sequence[str], n_distinct: int | None) -> float:
    """Where a K value sits on the x axis: its number (at most the class count, since a larger K
    offers every class), ``all`` at the class count."""
    if k != "all":
        return float(min(int(k), n_distinct)) if n_distinct else float(k)
    numeric = [int(v) for v in ks if v.isdigit()]
    return float(n_distinct) if n_distinct else float(2 * max(numeric, default=2))


def k_series(
    rows: list[dict[str, Any]], ks: Sequence[str], swept: Sequence[str],
    distinct: dict[str, int | None],
) -> list[dict[str, Any]]:  # fmt: skip
    """Per model, dataset and setting of the other axes: accuracy, CI and relative error by K."""
    others = [a for a in swept if a != "k"]
    grouped: dict[tuple, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row["k"] in ks:
            key = (row["model"], row["dataset"], *(row[a] for a in others))
            grouped.setdefault(key, {})[row["k"]] = row
    series = []
    for key, by_k in grouped.items():
        dataset = key[1]
        ordered = sorted(ks, key=lambda k: k_position(k, ks, distinct.get(dataset)))
        cells = [by_k.get(k, {}) for k in ordered]
        acc = [c.get("accuracy") for c in cells]
        series.append({
            "key": {"model": key[0], "dataset": dataset, **dict(zip(others, key[2:], strict=True))},
            "ks": ordered, "x": [k_position(k, ks, distinct.get(dataset)) for k in ordered],
            "accuracy": acc, "relative_error": relative_errors(acc),
            "ci": [(c.get("ci_low"), c.get("ci_high")) for c in cells],
        })  # fmt: skip
    return series


def relative_errors(accuracies: Sequence[float | None]) -> list[float | None]:
    """``(1 - acc) / (1 - acc[0])`` for each accuracy; None where undefined."""
    base = accuracies[0]
    if base is None or base >= 1.0:
        return [None] * len(accuracies)
    return [None if a is None else (1 - a) / (1 - base) for a in accuracies]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(key: dict[str, Any]) -> str:
    extra = [f"{k}={v}" for k, v in key.items() if k not in ("model", "dataset")]
    return " ".join([key["model"], *extra])


def plot_k_series(series: list[dict[str, Any]], path: Path, relative: bool) -> Path:
    """Figure 2 (accuracy vs K) or Figure 4's view (relative error rate vs K), panel per dataset."""
    plt = _pyplot()
    datasets = list(dict.fromkeys(s["key"]["dataset"] for s in series))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for s in (s for s in series if s["key"]["dataset"] == dataset):
            _draw_series(ax, s, relative)
        if not relative:
            xs = sorted({x for s in series if s["key"]["dataset"] == dataset for x in s["x"]})
            ax.plot(xs, [1 / x for x in xs], linestyle="--", color="grey", label="chance 1/K")
            ax.set_ylim(0, 1.02)
        ticks = {x: k for s in series if s["key"]["dataset"] == dataset
                 for x, k in zip(s["x"], s["ks"], strict=True)}  # fmt: skip
        ax.set_xscale("log")
        ax.set_xticks(list(ticks), [f"all ({x:g})" if k == "all" else k for x, k in ticks.items()])
        ax.minorticks_off()
        ax.set_xlabel("label-set size K (log scale)")
        ax.set_ylabel("error rate relative to smallest K" if relative else "accuracy")
        ax.set_title(dataset)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _draw_series(ax: Any, s: dict[str, Any], relative: bool) -> None:
    ys_all = s["relative_error" if relative else "accuracy"]
    points = [(x, y, ci) for x, y, ci in zip(s["x"], ys_all, s["ci"], strict=True) if y is not None]
    if not points:
        return
    xs, ys, cis = zip(*points, strict=True)
    if relative:
        ax.plot(xs, ys, marker="o", label=_label(s["key"]))
        return
    low = [y - (c[0] if c[0] is not None else y) for y, c in zip(ys, cis, strict=True)]
    high = [(c[1] if c[1] is not None else y) - y for y, c in zip(ys, cis, strict=True)]
    ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=_label(s["key"]))


def _mean_accuracy(rows: list[dict[str, Any]], model: str, axis: str, value: str) -> float:
    accs = [r["accuracy"] for r in rows if r["model"] == model and r[axis] == value]
    accs = [a for a in accs if a is not None]
    return sum(accs) / len(accs) if accs else 0.0


def plot_axes(
    rows: list[dict[str, Any]], names: Sequence[str], axes: dict[str, list[str]], path: Path
) -> Path:
    """Accuracy per value of each non-K axis (averaged over the other cells), bars per model."""
    plt = _pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, panels = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, axis in zip(panels[0], names, strict=True):
        values = axes.get(axis) or list(dict.fromkeys(r[axis] for r in rows))
        width = 0.8 / max(1, len(models))
        for i, model in enumerate(models):
            heights = [_mean_accuracy(rows, model, axis, value) for value in values]
            offsets = [x + (i - (len(models) - 1) / 2) * width for x in range(len(values))]
            ax.bar(offsets, heights, width, label=model)
        ax.set_xticks(range(len(values)), values, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(axis)
        ax.set_ylabel("accuracy (mean over other cells)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
