"""What the vision encoder and the LLM each contribute (``vlmclf attribute``).

Ghosh, Zhang and Schmidt (2026) find that a better LLM raises every benchmark about equally,
while a better vision encoder raises fine-grained classification two to three times more. With
stored runs of a grid of models that share components (LLaVA-1.5-7B/13B share CLIP-L; Qwen2-VL
2B/7B share the ViT), this module measures it:

* every model has two components, ``encoder`` and ``llm`` (from ``--components FILE``, else from
  the checkpoint's config: its vision tower and language model);
* a *pair* is two models whose components differ in exactly one; on each dataset both ran, the
  pair's effect is the accuracy difference on the images both answered;
* a component's effect on a group of datasets (``fine`` or ``coarse``, as declared per dataset)
  is the mean over its pairs and the group's datasets. Each pair is oriented so that its
  difference is positive over all datasets pooled ("changing to the better encoder"), so
  effects of pairs add up instead of cancelling;
* intervals come from a paired bootstrap over images: each dataset's images are resampled
  once per replicate and every model is scored on the same resample.

When no pair differs in only the encoder (or only the LLM), the grid cannot separate the two,
and the result says so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from vlmclf.analysis.components import (
    COMPONENTS,
    GROUPS,
    components_of_model,
    read_components_file,
)
from vlmclf.data.readers import parse_dataset_spec
from vlmclf.metrics.columnar import correctness_columns
from vlmclf.store import RunRecord, RunStore

DEFAULT_GROUPS = {
    "flowers102": "fine", "stanford_cars": "fine", "fgvc_aircraft": "fine", "food101": "fine",
    "oxford_pets": "fine", "cub200": "fine", "imagenet": "coarse", "caltech101": "coarse",
    "cifar10": "coarse", "cifar100": "coarse", "fashion_mnist": "coarse",
}  # fmt: skip
"""Datasets whose group needs no declaration; ``--components FILE``'s "groups" adds or replaces."""


@dataclass(frozen=True)
class Grid:
    """Per-image correctness of each model on each dataset, on the images all its models
    answered: ``correct[dataset][model]`` is a bool array aligned over those images."""

    correct: dict[str, dict[str, np.ndarray]]
    runs: dict[tuple[str, str], str]


def dataset_name(spec_dataset: str) -> str:
    """``imagenet:val`` -> ``imagenet``; a manifest -> its file stem."""
    name, _ = parse_dataset_spec(spec_dataset)
    return Path(name).stem if name.lower().endswith(".jsonl") else name


def load_grid(
    store: RunStore, runs: Sequence[RunRecord], rule: str = "contain"
) -> Grid:
    """Correctness per (dataset, model) on the images every model of that dataset answered.
    Two runs of one model on one dataset are ambiguous: pass the runs to compare."""
    by_cell: dict[tuple[str, str], RunRecord] = {}
    for record in runs:
        cell = (dataset_name(record.spec["dataset"]), record.spec["model"])
        if cell in by_cell:
            raise ValueError(
                f"runs {by_cell[cell].run_id} and {record.run_id} are both {cell[1]} on "
                f"{cell[0]}: pick one with --runs (or --method)"
            )
        by_cell[cell] = record
    per_dataset: dict[str, dict[str, dict[str, bool]]] = {}
    for (dataset, model), record in by_cell.items():
        cols = store.columns(record.run_id)
        correct = correctness_columns(cols, record.class_names, rule)  # type: ignore[arg-type]
        ids = cols.example_id[cols.ok]
        per_dataset.setdefault(dataset, {})[model] = dict(zip(ids.tolist(), correct.tolist(),
                                                              strict=True))  # fmt: skip
    correct_arrays: dict[str, dict[str, np.ndarray]] = {}
    for dataset, models in per_dataset.items():
        shared = sorted(set.intersection(*(set(m) for m in models.values())))
        if shared:
            correct_arrays[dataset] = {
                model: np.array([answers[i] for i in shared], dtype=bool)
                for model, answers in models.items()
            }
    return Grid(correct_arrays, {cell: r.run_id for cell, r in by_cell.items()})


def single_swaps(components: Mapping[str, Mapping[str, str]]) -> list[tuple[str, str, str]]:
    """(component, model a, model b) for each pair of models that differ in exactly one."""
    pairs = []
    for a, b in combinations(sorted(components), 2):
        differ = [c for c in COMPONENTS if components[a][c] != components[b][c]]
        if len(differ) == 1:
            pairs.append((differ[0], a, b))
    return pairs


def attribute(
    grid: Grid,
    components: Mapping[str, Mapping[str, str]],
    groups: Mapping[str, str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Encoder and LLM effects per dataset group with paired bootstrap intervals over images."""
    models = sorted({m for per in grid.correct.values() for m in per})
    missing = [m for m in models if m not in components]
    if missing:
        raise ValueError(f"no components known for {missing}: give them in --components FILE")
    unknown = sorted(d for d in grid.correct if d not in groups)
    if unknown:
        raise ValueError(f"no group for the datasets {unknown}: declare 'fine' or 'coarse' "
                         'in --components FILE ("groups")')  # fmt: skip
    pairs = single_swaps({m: components[m] for m in models})
    rng = np.random.default_rng(seed)
    point, boot = {}, {}
    for dataset, per_model in grid.correct.items():
        point[dataset] = {m: float(c.mean()) for m, c in per_model.items()}
        boot[dataset] = _bootstrap_accuracies(per_model, n_boot, rng)
    pair_rows = _pair_rows(pairs, point, boot)
    signs = _orientation(pair_rows)
    effects = _group_effects(pair_rows, signs, groups, n_boot)
    verdicts = _verdicts(pair_rows, effects, models, components)
    return {
        "models": {m: dict(components[m]) for m in models},
        "datasets": {d: {"group": groups[d], "n": len(next(iter(per.values())))}
                     for d, per in grid.correct.items()},
        "pairs": [{**row, "sign": signs[(row["a"], row["b"])]} for row in pair_rows],
        "effects": effects,
        "verdicts": verdicts,
        "runs": {f"{model} @ {dataset}": run for (dataset, model), run in grid.runs.items()},
    }  # fmt: skip


def _bootstrap_accuracies(
    per_model: dict[str, np.ndarray], n_boot: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Each model's accuracy on the same ``n_boot`` resamples of the dataset's images (the
    pairing), drawn a block of replicates at a time so memory stays at block x images."""
    models = sorted(per_model)
    correct = np.stack([per_model[m].astype(np.float64) for m in models])  # (models, n)
    n = correct.shape[1]
    block = max(1, min(n_boot, 4_000_000 // max(1, n)))
    out = np.empty((n_boot, len(models)))
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        counts = rng.multinomial(n, np.full(n, 1 / n), size=stop - start)  # (block, n)
        out[start:stop] = counts @ correct.T / n
    return {m: out[:, i] for i, m in enumerate(models)}


def _pair_rows(
    pairs: list[tuple[str, str, str]],
    point: dict[str, dict[str, float]],
    boot: dict[str, dict[str, np.ndarray]],
) -> list[dict[str, Any]]:
    """One row per (pair, dataset both models ran): b - a, with its replicates (dropped before
    storing)."""
    rows = []
    for component, a, b in pairs:
        for dataset in sorted(point):
            if a in point[dataset] and b in point[dataset]:
                rows.append({
                    "component": component, "a": a, "b": b, "dataset": dataset,
                    "diff": point[dataset][b] - point[dataset][a],
                    "_boot": boot[dataset][b] - boot[dataset][a],
                })  # fmt: skip
    return rows


def _orientation(rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """+1 when b beats a over all the pair's datasets pooled, else -1: effects are those of
    changing to the better component."""
    totals: dict[tuple[str, str], float] = {}
    for row in rows:
        totals[(row["a"], row["b"])] = totals.get((row["a"], row["b"]), 0.0) + row["diff"]
    return {pair: 1 if total >= 0 else -1 for pair, total in totals.items()}


def _group_effects(
    rows: list[dict[str, Any]], signs: dict[tuple[str, str], int],
    groups: Mapping[str, str], n_boot: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Mean oriented difference per (group, component), its interval, and the fine - coarse
    contrast per component."""
    effects = []
    replicates: dict[tuple[str, str], np.ndarray] = {}
    for group in GROUPS:
        for component in COMPONENTS:
            chosen = [r for r in rows if r["component"] == component
                      and groups[r["dataset"]] == group]  # fmt: skip
            row: dict[str, Any] = {"group": group, "component": component,
                                   "n_pairs": len({(r["a"], r["b"]) for r in chosen}),
                                   "n_datasets": len({r["dataset"] for r in chosen})}  # fmt: skip
            if chosen:
                sign = np.array([signs[(r["a"], r["b"])] for r in chosen], dtype=np.float64)
                diffs = np.array([r["diff"] for r in chosen]) * sign
                reps = (np.stack([r["_boot"] for r in chosen]) * sign[:, None]).mean(axis=0)
                replicates[(group, component)] = reps
                lo, hi = np.quantile(reps, [0.025, 0.975])
                row.update(effect=float(diffs.mean()), ci=[float(lo), float(hi)])
            effects.append(row)
    for component in COMPONENTS:
        if ("fine", component) in replicates and ("coarse", component) in replicates:
            reps = replicates[("fine", component)] - replicates[("coarse", component)]
            fine = next(e for e in effects if e["group"] == "fine" and e["component"] == component)
            coarse = next(e for e in effects
                          if e["group"] == "coarse" and e["component"] == component)  # fmt: skip
            lo, hi = np.quantile(reps, [0.025, 0.975])
            effects.append({"group": "fine - coarse", "component": component,
                            "effect": fine["effect"] - coarse["effect"],
                            "ci": [float(lo), float(hi)], "n_pairs": None,
                            "n_datasets": None})  # fmt: skip
    return effects


def _verdicts(
    rows: list[dict[str, Any]], effects: list[dict[str, Any]], models: list[str],
    components: Mapping[str, Mapping[str, str]],
) -> list[str]:  # fmt: skip
    """Plain sentences: what the grid can and cannot separate, and what the intervals say."""
    said = []
    for component in COMPONENTS:
        other = "LLM" if component == "encoder" else "encoder"
        name = "encoder" if component == "encoder" else "LLM"
        if not any(r["component"] == component for r in rows):
            distinct = len({components[m][component] for m in models})
            why = (f"all models share one {name}" if distinct < 2 else
                   f"no two models differ in the {name} alone (they differ in the {other} too)")
            said.append(f"the grid cannot separate the {name} effect: {why}")
    for effect in effects:
        if "effect" not in effect:
            continue
        name = "encoder" if effect["component"] == "encoder" else "LLM"
        lo, hi = effect["ci"]
        numbers = f"{effect['effect']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        if effect["group"] == "fine - coarse":
            verdict = ("larger on fine-grained data" if lo > 0 else
                       "larger on coarse data" if hi < 0 else
                       "no difference between the groups resolved at this size")  # fmt: skip
            said.append(f"{name} effect, fine - coarse: {numbers}: {verdict}")
            continue
        verdict = "excludes 0" if lo > 0 or hi < 0 else "includes 0: not resolved at this size"
        said.append(f"{name} effect on {effect['group']}: {numbers}, {verdict}")
    return said


def stored_pairs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The pair rows without their bootstrap replicates (for storing and printing)."""
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in result["pairs"]]


def effect_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline table: one row per (group, component)."""
    return [
        {"group": e["group"], "component": e["component"], "effect": e.get("effect"),
         "ci_low": e["ci"][0] if "ci" in e else None, "ci_high": e["ci"][1] if "ci" in e else None,
         "pairs": e["n_pairs"], "datasets": e["n_datasets"]}
        for e in result["effects"]
    ]  # fmt: skip


def plot_attribution(result: dict[str, Any], path: Path) -> Path:
    """Encoder effect and LLM effect per group, with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for offset, component, color in ((-0.18, "encoder", "#457b9d"), (0.18, "llm", "#e76f51")):
        for x, group in enumerate(GROUPS):
            effect = next((e for e in result["effects"] if e["group"] == group
                           and e["component"] == component and "effect" in e), None)  # fmt: skip
            if effect is None:
                ax.text(x + offset, 0, "n/a", ha="center", va="bottom", fontsize=8)
                continue
            lo, hi = effect["ci"]
            value = effect["effect"]
            ax.bar(x + offset, value, 0.34, color=color,
                   label=("encoder effect" if component == "encoder" else "LLM effect")
                   if x == 0 else None,
                   yerr=[[value - lo], [hi - value]], capsize=4)  # fmt: skip
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(GROUPS)), ["fine-grained", "coarse"])
    ax.set_ylabel("accuracy change (better component)")
    ax.set_title("Encoder effect / LLM effect per dataset group")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_attribution(
    store: RunStore,
    runs: Sequence[RunRecord],
    *,
    components_file: str | Path | None = None,
    rule: str = "contain",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Components from the file (else each checkpoint's config), groups from the file over the
    defaults; the grid, its effects, stored as kind ``attribute``."""
    declared, declared_groups = ({}, {})
    if components_file is not None:
        declared, declared_groups = read_components_file(components_file)
    grid = load_grid(store, runs, rule)
    components = dict(declared)
    for model in sorted({m for per in grid.correct.values() for m in per}):
        if model not in components:
            found = components_of_model(model)
            if found is not None:
                components[model] = found
    result = attribute(grid, components, {**DEFAULT_GROUPS, **declared_groups},
                       n_boot=n_boot, seed=seed)  # fmt: skip
    result["pairs"] = stored_pairs(result)
    result["rule"] = rule
    key = {"runs": sorted(result["runs"].values()), "components": result["models"],
           "rule": rule}  # fmt: skip
    result["analysis_id"] = store.save_analysis("attribute", key, result)
    return result
