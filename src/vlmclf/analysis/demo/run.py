"""Run the demo's model passes (stored runs are reused), derive the rest, judge the findings."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

import vlmclf.analysis.views  # noqa: F401 - registers every analysis with the report
from vlmclf.analysis.demo import findings as judge
from vlmclf.analysis.demo.grid import GRID_UNIFORM, encoder_vs_llm, grid_columns, grid_models
from vlmclf.analysis.demo.progress import PlannedStep, StepClock
from vlmclf.analysis.demo.report import write_reports
from vlmclf.analysis.demo.rescoring import aligned_correctness, crossfit_cfg, restrict_to_k
from vlmclf.methods import make_method
from vlmclf.metrics import bootstrap_ci, per_class_accuracy
from vlmclf.run.loading import LastModelLoader
from vlmclf.run.runner import RunConfig, RunResult, run
from vlmclf.spec import RunSpec

DATASET = "fashion_mnist"
VLM = "organism:vlm"
CLIP = "organism:clip"
FINETUNED = "organism:vlm-finetuned"
UNIFORM = "organism:vlm-uniform"
REVERSED = "organism:vlm-reversed"
LABEL_SET_SIZES = (2, 3, 5, 7, 10)

GEN = "generation (open world)"
LIK = "likelihood"
CFG = "likelihood + CFG"
TUNED = "generation, fine-tuned projector"
UNI = "generation, uniform-frequency organism"
REV = "generation, reversed-frequency organism"
PROBE = "linear probe, last token (clean)"
GRID_RUN = "generation, grid cell"
"""The grid's cells answer as the other organisms do (open world, containment); its strong frozen
cell is the uniform-frequency organism, whose run is ``UNI``'s."""


@dataclass(frozen=True)
class DemoSizes:
    """How many test images each part sees (subsets are nested: smaller ones are prefixes)."""

    n_clip: int = 500
    n_vlm: int = 200
    n_probe_train: int = 1000


QUICK_SIZES = DemoSizes(n_clip=150, n_vlm=60, n_probe_train=300)
"""``vlmclf demo --quick``: the same findings at about a third of the images (prefixes of the
full demo's, so a later full run reuses them); the intervals are wider and say so."""


@dataclass(frozen=True)
class DemoLikelihood:
    """The likelihood settings the demo uses: the paper protocol's answer prefix, CFG prior and
    grid (``from_settings(resolve("paper", "likelihood"))``; the command resolves them)."""

    answer_prefix: str
    cfg_prior: str
    cfg_grid: tuple[float, ...]

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> DemoLikelihood:
        grid = tuple(float(t) for t in settings["cfg_grid"])
        return cls(settings["answer_prefix"], settings["cfg_prior"], grid)

    def as_dict(self) -> dict[str, Any]:
        return {"answer_prefix": self.answer_prefix, "cfg_prior": self.cfg_prior,
                "cfg_grid": list(self.cfg_grid)}  # fmt: skip


def model_runs(likelihood: DemoLikelihood) -> dict[str, RunSpec]:
    """Every model pass but CLIP's and the probe's, named as in the report."""
    common = {"dataset": DATASET}
    prefix = likelihood.answer_prefix
    return {
        GEN: RunSpec(model=VLM, **common, method="generate", setting="open"),
        LIK: RunSpec(model=VLM, **common, method="likelihood", options={"answer_prefix": prefix}),
        TUNED: RunSpec(model=FINETUNED, **common, method="generate", setting="open"),
        UNI: RunSpec(model=UNIFORM, **common, method="generate", setting="open"),
        REV: RunSpec(model=REVERSED, **common, method="generate", setting="open"),
    } | {f"{GRID_RUN} {model}": RunSpec(model=model, **common, method="generate", setting="open")
         for model in grid_models() if model != GRID_UNIFORM}  # fmt: skip


def run_demo(
    sizes: DemoSizes,
    likelihood: DemoLikelihood,
    config: RunConfig,
    out_dir: Path,
    on_step: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Run every part, judge the findings, store them as a ``demo`` analysis, write reports."""
    out_dir.mkdir(parents=True, exist_ok=True)
    loader = LastModelLoader()
    specs = model_runs(likelihood)
    clock = StepClock(demo_plan(sizes, specs), on_step)
    clock.start_next()
    clip_spec = RunSpec(model=CLIP, dataset=DATASET, method="clip")
    runs = {"CLIP": run(clip_spec, replace(config, limit=sizes.n_clip), make_method,
                        load_model=loader)}  # fmt: skip
    for name, spec in specs.items():
        clock.start_next()
        runs[name] = run(spec, replace(config, limit=sizes.n_vlm), make_method, load_model=loader)
    clock.start_next()
    probe = _probe(sizes, config, out_dir, loader)
    counts = {"zipf": training_caption_counts(), "reversed": training_caption_counts(REVERSED)}
    result = judge_runs(runs, probe, counts, likelihood)
    result["sizes"] = sizes.__dict__
    result["runs"] = {name: r.run_id for name, r in runs.items()}
    result["probe_analysis"] = probe["analysis_id"]
    result["files"] = write_reports(result, config.store_path, out_dir)
    result["wall_time_s"] = round(clock.finish(), 1)
    (out_dir / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def demo_plan(sizes: DemoSizes, specs: dict[str, RunSpec]) -> list[PlannedStep]:
    """The demo's model passes in the order they run, with their sizes (for the progress line)."""
    plan = [PlannedStep(f"{CLIP}: zero-shot on {sizes.n_clip} test images", "clip", sizes.n_clip)]
    for name, spec in specs.items():
        kind = "likelihood" if spec.method == "likelihood" else "generate"
        what = name.removesuffix(f" {spec.model}")  # a grid cell's run is named by its model
        plan.append(PlannedStep(f"{spec.model}: {what} on {sizes.n_vlm} test images", kind,
                                sizes.n_vlm))  # fmt: skip
    probe_images = sizes.n_probe_train + sizes.n_vlm
    plan.append(PlannedStep(
        f"{VLM}: linear probe ({sizes.n_probe_train} train, {sizes.n_vlm} test images)",
        "probe", probe_images,
    ))  # fmt: skip
    return plan


def _probe(sizes: DemoSizes, config: RunConfig, out_dir: Path, loader: Any) -> dict[str, Any]:
    from vlmclf.analysis.probe.run import ProbeRequest, ProbeRuntime, run_probe

    outcome = run_probe(
        ProbeRequest(
            model=VLM, dataset=DATASET, train_limit=sizes.n_probe_train, limit=sizes.n_vlm,
            dtype=config.model.dtype,  # the features' dtype is part of their cache key
        ),
        ProbeRuntime(
            store_path=config.store_path, out_dir=out_dir / "probe", progress=config.progress,
            model_options=config.model,
        ),
        load_model=lambda spec: loader(spec, config.model),
    )  # fmt: skip
    clean = outcome.result["features"]["last_token"]["protocols"]["clean"]
    return {
        "analysis_id": outcome.analysis_id,
        "clean": clean,
        "correct": dict(zip(outcome.eval_ids, map(int, clean["correct"]), strict=True)),
    }


def training_caption_counts(model: str = VLM) -> dict[str, int]:
    """Captions per class in a shipped projector's training data (the frequency knob)."""
    from vlmclf.organism.load import RECORD_FILE, default_weights_dir

    name = model.removeprefix("organism:")
    record = json.loads((default_weights_dir(name) / RECORD_FILE).read_text())
    return dict(record["data"]["captions"]["counts"])


def judge_runs(
    runs: dict[str, RunResult],
    probe: dict[str, Any],
    counts: dict[str, dict[str, int]],
    likelihood: DemoLikelihood,
) -> dict[str, Any]:
    """Every finding from the runs' predictions (CFG and label-set sizes derived from them)."""
    names = runs["CLIP"].class_names
    settings = likelihood.as_dict()
    guided, ts = crossfit_cfg(runs[LIK].predictions, names, settings["cfg_grid"],
                              prior=settings["cfg_prior"])  # fmt: skip
    grid_runs = [name for name in runs if name.startswith(GRID_RUN)]
    cells = {runs[n].spec.model: runs[n].predictions for n in grid_runs}
    grid = grid_columns(cells | {GRID_UNIFORM: runs[UNI].predictions}, names)
    predictions = {n: r.predictions for n, r in runs.items() if n not in grid_runs} | {CFG: guided}
    columns = aligned_correctness(predictions, names)
    probe_ids = sorted(set(probe["correct"]))
    ids = sorted(p.example_id for p in runs[GEN].predictions if p.ok)
    columns[PROBE] = np.array([probe["correct"].get(i, np.nan) for i in ids], dtype=np.float64)
    columns = _drop_rows_without(columns, PROBE)
    vlm_methods = [GEN, LIK, CFG]
    best = max(vlm_methods, key=lambda m: columns[m].mean())
    curve = label_set_columns(runs["CLIP"].predictions, runs[LIK].predictions, names)
    per_class = {
        key: per_class_accuracy(runs[name].predictions, names, rule="contain")
        for key, name in (("zipf", GEN), ("uniform", UNI), ("reversed", REV))
    }
    found = [
        judge.clip_above(columns, "CLIP", vlm_methods),
        judge.orderings(columns, [(LIK, GEN), (CFG, LIK)]),
        judge.probe_recovers(columns, "CLIP", best, PROBE),
        judge.finetune_reaches(columns, "CLIP", GEN, TUNED),
        judge.label_set_size(curve, LABEL_SET_SIZES),
        judge.frequency_intervention(
            per_class["zipf"], per_class["uniform"], counts["zipf"],
            reversed_zipf=per_class["reversed"], reversed_counts=counts["reversed"],
        ),
        encoder_vs_llm(*grid, names),
    ]
    for finding, number in zip(found, ("1a", "1b", "2", "3", "4", "5", "6"), strict=True):
        finding["id"] = number
    return {
        "accuracies": accuracy_rows(runs, guided, probe, ts, likelihood.answer_prefix),
        "findings": found,
        "likelihood": {**settings, "cfg_t_per_fold": ts, "n_paired": int(len(columns["CLIP"]))},
        "probe_ids_scored": len(probe_ids),
        "caption_counts": counts["zipf"],
        "reversed_caption_counts": counts["reversed"],
    }


def _drop_rows_without(columns: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """Rows where ``name`` has a value (the probe scores a superset of the VLM's images)."""
    keep = np.isfinite(columns[name])
    return {key: col[keep] for key, col in columns.items()}


def label_set_columns(clip: list, vlm: list, names: list[str]) -> dict[str, np.ndarray]:
    """``clip@K`` and ``vlm@K`` correctness for every K, on the images both scored."""
    runs = {}
    for k in LABEL_SET_SIZES:
        runs[f"clip@{k}"] = restrict_to_k(clip, names, k)
        runs[f"vlm@{k}"] = restrict_to_k(vlm, names, k)
    return aligned_correctness(runs, names)


def accuracy_rows(
    runs: dict[str, RunResult],
    guided: list,
    probe: dict[str, Any],
    ts: list[float],
    answer_prefix: str,
) -> list[dict[str, Any]]:
    """One row per way of classifying: accuracy with its 95% CI and n."""
    rows = []
    for name, result in runs.items():
        method = "zero-shot CLIP" if name == "CLIP" else name.removesuffix(f" {result.spec.model}")
        if name == LIK:
            method = f"likelihood, answer prefix {answer_prefix!r}"
        rows.append(_row(result.spec.model, method, result.summary["n"],
                         result.summary["accuracy"], result.summary["ci95"]))  # fmt: skip
        if name == LIK:
            flags = [float(bool(p.hit)) for p in guided if p.ok]
            low, high = bootstrap_ci(flags)
            t_text = "/".join(f"{t:g}" for t in ts)
            rows.append(_row(VLM, f"{CFG} (t={t_text}, cross-fitted)", len(flags),
                             sum(flags) / len(flags), [low, high]))  # fmt: skip
    clean = probe["clean"]
    rows.append(_row(VLM, PROBE, clean["n_eval"], clean["accuracy"], clean["ci95"]))
    return rows


def _row(model: str, method: str, n: int, accuracy: float | None, ci: Any) -> dict[str, Any]:
    ci_text = "[-, -]" if not ci or ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
    return {"model": model, "method": method, "n": n, "accuracy": accuracy, "ci95": ci_text}
