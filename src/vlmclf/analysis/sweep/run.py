"""Inference sweeps: how prompt, label order, chain of thought, label-set size K and inference
strategy move a VLM's accuracy (paper Section 3, Figure 2, Figure 4, Table 7).

A sweep is the full grid over the axes given, for every model and dataset. Each cell is one
RunSpec run by ``vlmclf.run.runner.run``, so every cell's predictions land in the run store like any
``eval`` run: a repeated or interrupted sweep reuses and resumes them, and a cell whose spec equals
an earlier ``eval`` run is that run. Closed-world choices come from ``sample_choices(label, K,
order, seed, example_id)``, so every model sees the same choices for the same example, and
``--limit`` picks the same examples for every cell.

Axes and their values (defaults in brackets, used when an axis is not swept):

* ``k``: label-set size: integers >= 2, ``all`` (closed world, every class offered) or ``open``
  (the open-world question) [open]. A K at least the number of distinct classes is ``all``.
* ``prompt``: ``base``, ``alt1``, ``alt2``, ``alt3`` (the paper's four wordings) or any question
  [base].
* ``order``: ``fixed`` or ``random`` order of the offered labels [fixed].
* ``cot``: ``false`` / ``true``: append "Let's think step by step." [false].
* ``strategy``: ``generate`` (method generate), ``likelihood-sum`` / ``likelihood-mean``
  (method likelihood with ``agg``), ``cfg:T`` (likelihood with guidance weight T) or ``clip``
  (a CLIP model; prompt, order and cot do not apply to it) [generate].
* ``choices``: ``random``, ``hard-text`` or ``hard-image``: how the K offered labels are drawn
  (hard ones mined by ``--choice-model``, see ``vlmclf.run.hard_choices``) [random]. Where every
  class is offered (K ``all`` or ``open``) there is nothing to draw and the cell is ``random``'s.

A cell that fails (a method not available, a model that cannot do a strategy) is recorded with
its error and the sweep goes on. Tables and figures: ``analysis/sweep/report.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vlmclf.data.readers import parse_dataset_spec
from vlmclf.run.loading import LastModelLoader, load_any_model, resolve_dtype
from vlmclf.run.runner import ModelLoader, RunConfig, run
from vlmclf.spec import RunSpec

AXES = ("k", "prompt", "order", "cot", "strategy", "choices")
DEFAULTS: dict[str, str] = {
    "k": "open", "prompt": "base", "order": "fixed", "cot": "false", "strategy": "generate",
    "choices": "random",
}  # fmt: skip
CHOICE_MODES = ("random", "hard-text", "hard-image")
_BOOLS = {"true": "true", "false": "false", "yes": "true", "no": "false", "1": "true", "0": "false"}


@dataclass(frozen=True)
class SweepCell:
    """One point of the grid: a model, a dataset and a value for every axis."""

    model: str
    dataset: str
    values: dict[str, str] = field(hash=False)

    def row_key(self) -> dict[str, str]:
        return {"model": self.model, "dataset": self.dataset, **self.values}


# --------------------------------------------------------------------------- parsing


def parse_axis(text: str) -> tuple[str, list[str]]:
    """``"k=2,5,all"`` -> ``("k", ["2", "5", "all"])``, each value checked."""
    name, sep, raw = text.partition("=")
    name = name.strip().lower()
    if not sep or name not in AXES:
        raise ValueError(f"--axis {text!r}: expected NAME=V1,V2,... with NAME in {', '.join(AXES)}")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not values:
        raise ValueError(f"--axis {text!r}: no values after '='")
    checked = [normalize_value(name, v) for v in values]
    if len(set(checked)) != len(checked):
        raise ValueError(f"--axis {text!r}: repeated values")
    return name, checked


def parse_axes(texts: Sequence[str]) -> dict[str, list[str]]:
    axes: dict[str, list[str]] = {}
    for text in texts:
        name, values = parse_axis(text)
        if name in axes:
            raise ValueError(f"--axis {name} given twice; list all its values in one --axis")
        axes[name] = values
    return axes


def normalize_value(axis: str, value: str) -> str:
    """A value in its canonical spelling, or ValueError naming the axis."""
    lowered = value.lower()
    if axis == "k":
        if lowered in ("all", "open"):
            return lowered
        if not lowered.isdigit() or int(lowered) < 2:
            raise ValueError(f"--axis k: {value!r} is not an integer >= 2, 'all' or 'open'")
        return str(int(lowered))
    if axis == "order":
        if lowered not in ("fixed", "random"):
            raise ValueError(f"--axis order: {value!r} is not 'fixed' or 'random'")
        return lowered
    if axis == "cot":
        if lowered not in _BOOLS:
            raise ValueError(f"--axis cot: {value!r} is not true or false")
        return _BOOLS[lowered]
    if axis == "strategy":
        return _normalize_strategy(value)
    if axis == "choices":
        if lowered not in CHOICE_MODES:
            raise ValueError(f"--axis choices: {value!r} is not {', '.join(CHOICE_MODES)}")
        return lowered
    return value  # prompt: a named wording or the question itself


def _normalize_strategy(value: str) -> str:
    lowered = value.lower()
    if lowered in ("generate", "likelihood-sum", "likelihood-mean", "clip"):
        return lowered
    if lowered == "likelihood":
        return "likelihood-sum"
    if lowered.startswith("cfg:"):
        try:
            weight = float(lowered[4:])
        except ValueError:
            raise ValueError(f"--axis strategy: {value!r}: cfg:T needs a number T") from None
        return f"cfg:{weight:g}"
    raise ValueError(
        f"--axis strategy: {value!r}: use generate, likelihood-sum, likelihood-mean, cfg:T or clip"
    )


# --------------------------------------------------------------------------- the grid


def sweep_cells(
    models: Sequence[str], datasets: Sequence[str], axes: dict[str, list[str]]
) -> list[SweepCell]:
    """Every (model, dataset, axis values) combination, models outermost (one load at a time)."""
    names = [a for a in AXES if a in axes]
    grids = [axes[a] for a in names]
    cells = []
    for model, dataset in itertools.product(models, datasets):
        for combo in itertools.product(*grids):
            values = dict(DEFAULTS) | dict(zip(names, combo, strict=True))
            cells.append(SweepCell(model, dataset, values))
    return cells


def cell_spec(
    cell: SweepCell, n_distinct: int | None, seed: int = 0, max_new_tokens: int | None = None,
    dtype: str = "float32", choice_model: str | None = None,
) -> RunSpec:  # fmt: skip
    """The RunSpec of a cell. Settings that do not apply to its strategy keep their defaults, so
    cells that compute the same thing share one run. ``dtype`` is the model's, resolved."""
    values = cell.values
    strategy = values["strategy"]
    k_value = values["k"]
    k = None if k_value in ("all", "open") else int(k_value)
    if k is not None and n_distinct is not None and k >= n_distinct:
        k = None  # every class is offered: the same run as K=all
    name, split = parse_dataset_spec(cell.dataset)
    common: dict[str, Any] = {"model": cell.model, "dataset": name, "split": split, "seed": seed,
                              "dtype": dtype}  # fmt: skip
    if k is not None and values["choices"] != "random":
        common |= {"choices": values["choices"], "choice_model": choice_model}
    if strategy == "clip":
        return RunSpec(**common, method="clip", k=k)
    setting = "open" if k_value == "open" else "closed"
    closed = setting == "closed"
    prompt_fields = {
        "setting": setting, "k": k if closed else None, "prompt": values["prompt"],
        "order": values["order"] if closed else "fixed", "cot": values["cot"] == "true",
    }  # fmt: skip
    if strategy == "generate":
        return RunSpec(**common, method="generate", max_new_tokens=max_new_tokens, **prompt_fields)
    options: dict[str, str | float] = {}
    if strategy == "likelihood-mean":
        options["agg"] = "mean"
    elif strategy.startswith("cfg:"):
        options["cfg"] = float(strategy[4:])
    return RunSpec(**common, method="likelihood", options=options, **prompt_fields)


def build_sweep_method(model: object, class_names: list[str], spec: RunSpec) -> Any:
    """``make_method``, with a clear message where the likelihood method is not installed."""
    from vlmclf.methods import make_method

    try:
        return make_method(model, class_names, spec)
    except ModuleNotFoundError as err:
        raise RuntimeError(
            f"--method {spec.method} is not available in this vlmclf ({err.name} is missing)"
        ) from err


# --------------------------------------------------------------------------- running


def run_sweep(
    models: Sequence[str],
    datasets: Sequence[str],
    axes: dict[str, list[str]],
    config: RunConfig,
    *,
    seed: int = 0,
    max_new_tokens: int | None = None,
    out_dir: str | Path | None = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
    choice_model: str | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every cell; return ``{rows, tables, files, analysis_id}``.

    ``rows`` is the long-form table: one row per cell with its axis values, run id, accuracy,
    95% bootstrap CI, n, failures and error (None when the cell ran).
    """
    from vlmclf.analysis.sweep.report import write_sweep_report
    from vlmclf.run.distributed import is_main_process
    from vlmclf.store import RunStore

    if not models or not datasets:
        raise ValueError("a sweep needs at least one --model and one --dataset")
    distinct = {d: _distinct_classes(d, config) for d in datasets}
    rows = []
    loader = LastModelLoader()
    for cell in sweep_cells(models, datasets, axes):
        row = run_cell(cell, config, distinct[cell.dataset], seed, max_new_tokens, loader,
                       choice_model)  # fmt: skip
        rows.append(row)
        if on_cell is not None:
            on_cell(row)
    result: dict[str, Any] = {"rows": rows, "axes": {a: axes[a] for a in AXES if a in axes},
                              "n_distinct": distinct}  # fmt: skip
    if not is_main_process():  # under torchrun the main rank alone writes reports and the store
        return result | {"files": {}, "analysis_id": None}
    result["files"] = write_sweep_report(rows, axes, distinct, Path(out_dir)) if out_dir else {}
    spec = {"models": list(models), "datasets": list(datasets), "axes": result["axes"],
            "limit": config.limit, "seed": seed, "max_new_tokens": max_new_tokens,
            **({"choice_model": choice_model} if choice_model else {})}  # fmt: skip
    with RunStore(config.store_path) as store:
        result["analysis_id"] = store.save_analysis("sweep", spec, result)
    return result


def run_cell(
    cell: SweepCell, config: RunConfig, n_distinct: int | None, seed: int,
    max_new_tokens: int | None, loader: ModelLoader = load_any_model,
    choice_model: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One cell's row; a failure becomes the row's ``error`` instead of stopping the sweep."""
    row: dict[str, Any] = cell.row_key()
    warnings: list[str] = []
    try:
        config = _with_model_dtype(config, cell.model)
        spec = cell_spec(cell, n_distinct, seed, max_new_tokens, config.model.dtype, choice_model)
        row["run_id"] = None  # the content identity's id, known once the run has started
        result = run(
            spec, config, build_sweep_method, on_warning=warnings.append, load_model=loader
        )
        row["run_id"] = result.run_id
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - one cell's failure is data for the sweep table
        error = f"{type(err).__name__}: {err}"
        return row | _empty_metrics() | {"error": error, "warnings": warnings}
    summary = result.summary
    ci = summary.get("ci95") or [None, None]
    return row | {
        "n": summary["n"], "n_failed": summary["n_failed"], "accuracy": summary["accuracy"],
        "ci_low": ci[0], "ci_high": ci[1], "strict_accuracy": summary["strict_accuracy"],
        "newly_done": result.newly_done, "error": None, "warnings": warnings,
    }  # fmt: skip


def _with_model_dtype(config: RunConfig, model: str) -> RunConfig:
    """The config with ``--dtype auto`` resolved for this model (each has its own)."""
    dtype = resolve_dtype(config.model.dtype, model, config.model.device)
    return replace(config, model=replace(config.model, dtype=dtype))


def _empty_metrics() -> dict[str, Any]:
    keys = ("n", "n_failed", "accuracy", "ci_low", "ci_high", "strict_accuracy", "newly_done")
    return dict.fromkeys(keys)


def _distinct_classes(dataset: str, config: RunConfig) -> int | None:
    """How many distinct class names the dataset has (None if it cannot be read here; the cells
    will then fail with the reader's own message)."""
    from vlmclf.data import load_dataset

    try:
        found = load_dataset(dataset, data_root=config.data_root, classes=config.classes)
    except (ValueError, FileNotFoundError, OSError):
        return None
    return len(set(found.class_names))
