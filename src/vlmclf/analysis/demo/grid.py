"""Finding 6: what the image encoder and the LLM each contribute, on the organism's grid.

Ghosh, Zhang and Schmidt (2026) find that a better vision encoder raises fine-grained
classification two to three times more than a better LLM does, and that pretraining with the LLM
unfrozen matters for fine-grained knowledge. The organism's grid (``vlmclf.organism.grid``) has
two encoders x two LLMs, frozen, and the strong pair again with the LLM learning (LoRA). The
effects come from ``vlmclf attribute``'s estimator (pairs of cells that differ in one component,
paired bootstrap over images), with Fashion-MNIST's confusable tops as the fine-grained group
and the other six classes as the coarse one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlmclf.analysis.attribute import Grid, attribute, components_of_model
from vlmclf.analysis.demo.findings import fmt_ci, interval_verdict, paired_difference
from vlmclf.metrics import correctness
from vlmclf.organism.grid import FASHION_TOPS
from vlmclf.organism.load import GRID
from vlmclf.records import Prediction

FROZEN = [name for name, cell in GRID.items() if cell["llm"] == "frozen"]
UNFROZEN = next(name for name, cell in GRID.items() if cell["llm"] == "lora")
UNFROZEN_BASE = "grid-lite0-smollm2"
GRID_UNIFORM = f"organism:{UNFROZEN_BASE}"
"""The strong frozen cell, shipped as ``organism:vlm-uniform`` (the demo runs it once, as that)."""
GROUPS = {"tops": "fine", "rest": "coarse"}


def grid_models() -> list[str]:
    return [f"organism:{name}" for name in GRID]


def grid_columns(
    predictions: Mapping[str, Sequence[Prediction]], class_names: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """0/1 correctness (containment) of each model on the images all answered, in id order,
    and those images' labels."""
    per_model, labels = {}, {}
    for model, preds in predictions.items():
        ok = [p for p in preds if p.ok]
        flags = correctness(ok, class_names, rule="contain")
        per_model[model] = dict(zip((p.example_id for p in ok), flags, strict=True))
        labels.update({p.example_id: p.label for p in ok})
    shared = sorted(set.intersection(*(set(d) for d in per_model.values())))
    columns = {m: np.array([d[i] for i in shared], dtype=np.float64) for m, d in per_model.items()}
    return columns, np.array([labels[i] for i in shared], dtype=np.int64)


def split_by_group(
    columns: Mapping[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """{"tops" | "rest": {model: bool correctness}} from columns aligned with ``labels``."""
    is_top = np.array([class_names[label] in FASHION_TOPS for label in labels])
    return {group: {model: col[mask].astype(bool) for model, col in columns.items()}
            for group, mask in (("tops", is_top), ("rest", ~is_top))}  # fmt: skip


def encoder_vs_llm(
    columns: Mapping[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str],
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Finding 6 from aligned 0/1 correctness of every grid model (``organism:<name>`` keys)."""
    frozen = {f"organism:{n}": columns[f"organism:{n}"] for n in FROZEN}
    components = {model: components_of_model(model) for model in frozen}
    if any(c is None for c in components.values()):
        raise ValueError(f"a grid organism's config names no components: {components}")
    grid = Grid(split_by_group(frozen, labels, class_names), runs={})
    result = attribute(grid, components, GROUPS, n_boot=n_boot)  # type: ignore[arg-type]
    effects = {(e["group"], e["component"]): e for e in result["effects"] if "effect" in e}
    unfrozen = _unfrozen(columns, labels, class_names)
    versus = encoder_minus_llm(result["pairs"])
    return {
        "finding": "a better image encoder helps the fine-grained classes (the tops) more than "
                   "a better LLM does (Ghosh et al. 2026)",
        "evidence": _evidence(effects, versus, unfrozen),
        "verdict": _verdict(versus["tops - rest"]["ci"], unfrozen["tops"]["ci95"]),
        "details": {"attribute": {k: v for k, v in result.items() if k != "pairs"},
                    "encoder_minus_llm": versus,
                    "pairs": [{k: v for k, v in p.items() if not k.startswith("_")}
                              for p in result["pairs"]],
                    "unfrozen_minus_frozen": unfrozen,
                    "n": {g: int(len(next(iter(c.values()))))
                          for g, c in grid.correct.items()}},
    }  # fmt: skip


def _unfrozen(
    columns: Mapping[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """LLM learning (LoRA) minus frozen, same encoder and recipe, per group."""
    pair = {key: columns[f"organism:{key}"] for key in (UNFROZEN, UNFROZEN_BASE)}
    groups = split_by_group(pair, labels, class_names)
    return {group: paired_difference({k: v.astype(np.float64) for k, v in cols.items()},
                                     UNFROZEN, UNFROZEN_BASE)
            for group, cols in groups.items()}  # fmt: skip


def encoder_minus_llm(pairs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The encoder's effect minus the LLM's on the tops, on the rest, and the difference of
    their tops − rest contrasts (does the encoder's gain lean toward the tops more than the
    LLM's?), from the same paired bootstrap replicates as ``attribute``'s effects."""
    effect, replicates = {}, {}
    for group in GROUPS:
        for component in ("encoder", "llm"):
            rows = [p for p in pairs if p["component"] == component and p["dataset"] == group]
            effect[group, component] = float(np.mean([p["sign"] * p["diff"] for p in rows]))
            replicates[group, component] = np.mean([p["sign"] * p["_boot"] for p in rows], axis=0)

    def contrast(point: float, reps: np.ndarray) -> dict[str, Any]:
        low, high = np.quantile(reps, [0.025, 0.975])
        return {"diff": point, "ci": [float(low), float(high)]}

    def minus(group: str) -> tuple[float, np.ndarray]:
        return (effect[group, "encoder"] - effect[group, "llm"],
                replicates[group, "encoder"] - replicates[group, "llm"])  # fmt: skip

    (tops, tops_reps), (rest, rest_reps) = minus("tops"), minus("rest")
    return {"tops": contrast(tops, tops_reps), "rest": contrast(rest, rest_reps),
            "tops - rest": contrast(tops - rest, tops_reps - rest_reps)}  # fmt: skip


def _evidence(
    effects: dict[tuple[str, str], dict[str, Any]],
    versus: dict[str, dict[str, Any]],
    unfrozen: dict[str, Any],
) -> str:
    parts = []
    for component, name in (("encoder", "encoder (Lite0 ↔ block 2, toward the better)"),
                            ("llm", "LLM (SmolLM2 ↔ 3-bit, toward the better)")):  # fmt: skip
        fine, coarse = effects[("fine", component)], effects[("coarse", component)]
        parts.append(f"{name}: tops {fine['effect']:+.3f} {fmt_ci(fine['ci'])}, rest "
                     f"{coarse['effect']:+.3f} {fmt_ci(coarse['ci'])}")  # fmt: skip
    parts.append("encoder − LLM: tops {:+.3f} {}, rest {:+.3f} {}, tops − rest {:+.3f} {}".format(
        *(x for key in ("tops", "rest", "tops - rest")
          for x in (versus[key]["diff"], fmt_ci(versus[key]["ci"])))))  # fmt: skip
    tops, rest = unfrozen["tops"], unfrozen["rest"]
    parts.append(f"LLM learning (LoRA) − frozen: tops {tops['diff']:+.3f} "
                 f"{fmt_ci(tops['ci95'])}, rest {rest['diff']:+.3f} {fmt_ci(rest['ci95'])}")
    return "; ".join(parts)


def _verdict(leaning: Sequence[float], unfrozen_tops: Sequence[float] | None) -> str:
    """Encoder half: the encoder's tops − rest contrast minus the LLM's must exclude 0 (the
    study: a better LLM lifts every benchmark about equally, a better encoder the fine-grained
    ones most)."""
    first = interval_verdict(leaning, "difference between how the encoder's and the LLM's gains "
                             "lean toward the tops", "reversed: the LLM's gain leans toward the "
                             "tops more")  # fmt: skip
    second = interval_verdict(unfrozen_tops, "gain on the tops", "reversed")
    return f"encoder vs LLM: {first}; LLM learning helps the tops: {second}"
