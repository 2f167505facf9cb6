"""The demo's findings and their verdicts, as functions of aligned 0/1 correctness.

Every comparison is paired (the same images for both sides, resampled jointly) and every
verdict follows one rule: a claim "holds" only when its 95% interval excludes the null; an
interval on the other side says the claim is reversed; otherwise the organism does not show it
at this size, and the verdict says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlmclf.analysis.demo.rescoring import joint_bootstrap

REACH_MARGIN = 0.05
"""Fine-tuning "reaches CLIP's level" when CLIP's lead is below this with 95% confidence."""
MOST = 0.5
"""The probe "recovers most of the gap" when it closes at least this share of it."""


def fmt_ci(ci: Sequence[float | None] | None, digits: int = 3) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "[-, -]"
    return f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def fmt_ratio(value: float) -> str:
    """The VLM's error as a multiple of CLIP's, as a phrase; undefined where CLIP made none."""
    if not np.isfinite(value):
        return "VLM error ratio undefined (CLIP made no error)"
    return f"VLM error ×{value:.1f} CLIP's"


def interval_verdict(ci: Sequence[float] | None, claim: str, reverse: str) -> str:
    """'holds' when the interval is above 0, ``reverse`` when below, else 'not shown'."""
    if ci is None:
        return "undefined at this size"
    if ci[0] > 0:
        return "holds"
    if ci[1] < 0:
        return reverse
    return f"not shown at this size (the interval includes 0: no {claim})"


def mean_difference(a: str, b: str) -> Any:
    return lambda cols: float(cols[a].mean() - cols[b].mean())


def paired_difference(columns: Mapping[str, np.ndarray], a: str, b: str) -> dict[str, Any]:
    """Accuracy of ``a`` minus ``b`` on the same images, with its paired 95% interval."""
    diff, ci = joint_bootstrap(columns, mean_difference(a, b))
    return {"a": a, "b": b, "n": int(len(columns[a])), "diff": diff, "ci95": ci}


def clip_above(columns: Mapping[str, np.ndarray], clip: str, methods: Sequence[str]) -> dict:
    """Finding 1a: CLIP minus each VLM method."""
    comparisons = [paired_difference(columns, clip, m) for m in methods]
    held = sum(c["ci95"] is not None and c["ci95"][0] > 0 for c in comparisons)
    verdict = (
        "holds" if held == len(comparisons)
        else f"holds for {held} of {len(comparisons)} methods" if held
        else "does not hold"
    )  # fmt: skip
    evidence = "; ".join(
        f"{c['b']}: CLIP − VLM = {c['diff']:+.3f} {fmt_ci(c['ci95'])}" for c in comparisons
    )
    return {
        "finding": "VLM classifies worse than CLIP on the same image encoder",
        "evidence": evidence,
        "verdict": verdict,
        "details": comparisons,
    }


def orderings(columns: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]]) -> dict:
    """Finding 1b: the paper's Table 2 order, each pair ``(better, worse)`` tested on its own."""
    rows = []
    for better, worse in pairs:
        test = paired_difference(columns, better, worse)
        test["verdict"] = interval_verdict(test["ci95"], "ordering", "reversed")
        rows.append(test)
    held = [r["verdict"] == "holds" for r in rows]
    verdict = (
        "holds" if all(held)
        else "; ".join(f"{r['a']} > {r['b']}: {r['verdict']}" for r in rows)
    )  # fmt: skip
    evidence = "; ".join(
        f"{r['a']} − {r['b']} = {r['diff']:+.3f} {fmt_ci(r['ci95'])}" for r in rows
    )
    return {
        "finding": "likelihood beats generation, and classifier-free guidance improves "
        "likelihood (the paper's Table 2 order)",
        "evidence": evidence,
        "verdict": verdict,
        "details": rows,
    }


def probe_recovers(
    columns: Mapping[str, np.ndarray], clip: str, best_vlm: str, probe: str
) -> dict[str, Any]:
    """Finding 2: the share of the CLIP-minus-best-VLM gap the probe closes, on the same images:
    (probe − VLM) / (CLIP − VLM), with a paired interval. Holds when its lower bound >= MOST."""

    def share(cols: Mapping[str, np.ndarray]) -> float:
        gap = cols[clip].mean() - cols[best_vlm].mean()
        return float((cols[probe].mean() - cols[best_vlm].mean()) / gap) if gap > 0 else np.nan

    gap = paired_difference(columns, clip, best_vlm)
    value, ci = joint_bootstrap(columns, share)
    accuracy = {name: float(columns[name].mean()) for name in (clip, best_vlm, probe)}
    evidence = (
        f"CLIP {accuracy[clip]:.3f}, best VLM method ({best_vlm}) {accuracy[best_vlm]:.3f}, "
        f"probe {accuracy[probe]:.3f} on the same {gap['n']} images"
    )
    if gap["ci95"] is None or gap["ci95"][0] <= 0 or not np.isfinite(value):
        verdict = "not applicable: no significant gap to recover"
    elif ci is not None and ci[0] >= MOST:
        verdict = "holds"
    elif ci is not None and ci[0] > 0:
        verdict = f"partly: the probe closes part of the gap (not {MOST:.0%} with 95% confidence)"
    else:
        verdict = "does not hold"
    share_text = f"{value:.0%}" if np.isfinite(value) else "-"
    ci_text = f"[{ci[0]:.0%}, {ci[1]:.0%}]" if ci else "[-, -]"
    return {
        "finding": "a linear probe on the VLM's hidden states recovers most of the gap",
        "evidence": f"{evidence}; share of the gap recovered {share_text} {ci_text}",
        "verdict": verdict,
        "details": {"gap": gap, "share": value, "share_ci95": ci, "accuracy": accuracy},
    }


def finetune_reaches(
    columns: Mapping[str, np.ndarray], clip: str, before: str, after: str
) -> dict[str, Any]:
    """Finding 3: fine-tuning the projector with the generation objective. Holds when the
    fine-tuned VLM beats its base and CLIP's lead over it is below REACH_MARGIN (both 95%)."""
    gain = paired_difference(columns, after, before)
    lead = paired_difference(columns, clip, after)
    improved = gain["ci95"] is not None and gain["ci95"][0] > 0
    reached = lead["ci95"] is not None and lead["ci95"][1] < REACH_MARGIN
    if improved and lead["ci95"] is not None and lead["ci95"][1] < 0:
        verdict = "holds: the fine-tuned VLM is above CLIP"
    elif improved and reached:
        verdict = "holds"
    elif improved and lead["ci95"] is not None and lead["ci95"][0] <= 0:
        verdict = (
            "partly: fine-tuning helps and the fine-tuned VLM is not distinguishable from CLIP, "
            f"but a CLIP lead of {REACH_MARGIN:.2f} is not ruled out at this size"
        )
    elif improved:
        verdict = "partly: fine-tuning helps but CLIP's level is not reached"
    else:
        verdict = "does not hold"
    evidence = (
        f"fine-tuned − base = {gain['diff']:+.3f} {fmt_ci(gain['ci95'])}; CLIP − fine-tuned = "
        f"{lead['diff']:+.3f} {fmt_ci(lead['ci95'])}; CLIP's level counts as reached when "
        f"that interval lies below +{REACH_MARGIN:.2f}"
    )
    return {
        "finding": "fine-tuning the projector with the generation objective reaches CLIP's level",
        "evidence": evidence,
        "verdict": verdict,
        "details": {"gain": gain, "clip_lead": lead, "margin": REACH_MARGIN},
    }


def error_ratio(vlm: str, clip: str) -> Any:
    """The VLM's error rate over CLIP's (NaN where CLIP makes no error)."""

    def ratio(cols: Mapping[str, np.ndarray]) -> float:
        clip_err = 1.0 - cols[clip].mean()
        return float((1.0 - cols[vlm].mean()) / clip_err) if clip_err > 0 else np.nan

    return ratio


def label_set_size(columns: Mapping[str, np.ndarray], ks: Sequence[int]) -> dict[str, Any]:
    """Finding 4 (the paper's Figure 2): per K, CLIP − VLM and the VLM's error over CLIP's.

    ``columns`` holds ``clip@K`` and ``vlm@K`` for each K. The trend is tested between the
    largest and the smallest K on the same images: the gap narrows when gap(Kmax) − gap(Kmin)
    is above 0, the relative error grows when ratio(Kmin) − ratio(Kmax) is above 0."""
    curve = []
    for k in ks:
        gap = paired_difference(columns, f"clip@{k}", f"vlm@{k}")
        ratio, ratio_ci = joint_bootstrap(columns, error_ratio(f"vlm@{k}", f"clip@{k}"))
        curve.append({
            "k": k, "clip": float(columns[f"clip@{k}"].mean()),
            "vlm": float(columns[f"vlm@{k}"].mean()), "gap": gap["diff"], "gap_ci95": gap["ci95"],
            "error_ratio": ratio, "error_ratio_ci95": ratio_ci,
        })  # fmt: skip
    small, large = min(ks), max(ks)

    def narrowing(cols: Mapping[str, np.ndarray]) -> float:
        return mean_difference(f"clip@{large}", f"vlm@{large}")(cols) - mean_difference(
            f"clip@{small}", f"vlm@{small}"
        )(cols)

    def growth(cols: Mapping[str, np.ndarray]) -> float:
        return error_ratio(f"vlm@{small}", f"clip@{small}")(cols) - error_ratio(
            f"vlm@{large}", f"clip@{large}"
        )(cols)

    narrows, narrows_ci = joint_bootstrap(columns, narrowing)
    grows, grows_ci = joint_bootstrap(columns, growth)
    gap_verdict = interval_verdict(narrows_ci, "narrowing", "reversed: the gap widens")
    ratio_verdict = interval_verdict(grows_ci, "growth", "reversed: the relative error shrinks")
    verdict = (
        "holds" if gap_verdict == ratio_verdict == "holds"
        else f"gap narrows: {gap_verdict}; relative error grows: {ratio_verdict}"
    )  # fmt: skip
    evidence = (
        "; ".join(
            f"K={row['k']}: CLIP − VLM {row['gap']:+.3f} {fmt_ci(row['gap_ci95'])}, "
            f"{fmt_ratio(row['error_ratio'])}"
            for row in curve
        )
        + f"; gap(K={large}) − gap(K={small}) = {narrows:+.3f} {fmt_ci(narrows_ci)}; "
        f"error ratio(K={small}) − ratio(K={large}) = "
        + (f"{grows:+.2f} {fmt_ci(grows_ci, 2)}" if np.isfinite(grows) else "undefined")
    )
    return {
        "finding": "as the label set shrinks the gap narrows and the VLM's relative error grows",
        "evidence": evidence,
        "verdict": verdict,
        "details": {
            "curve": curve,
            "narrowing": {"value": narrows, "ci95": narrows_ci, "verdict": gap_verdict},
            "error_ratio_growth": {"value": grows, "ci95": grows_ci, "verdict": ratio_verdict},
        },
    }


def frequency_intervention(
    zipf: Mapping[str, float],
    uniform: Mapping[str, float],
    counts: Mapping[str, int],
    *,
    reversed_zipf: Mapping[str, float] | None = None,
    reversed_counts: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Finding 5: does changing the caption frequencies change per-class accuracy?

    Two interventions on the Zipf organism's captions, same images and encoder. The direct one
    (``reversed_zipf``): the Zipf law with its ranking reversed, so each class's caption count
    moves by a known factor; the per-class accuracy change (reversed − Zipf) against that
    factor is the causal effect of frequency, free of which classes happen to be easy. The
    second: uniform frequencies; the change (Zipf − uniform) against the Zipf counts.
    Holds when either change follows the frequencies (its Spearman interval is above 0)."""
    from vlmclf.analysis.frequency.stats import correlate

    shared = [name for name in counts if name in zipf and name in uniform]
    change = {name: zipf[name] - uniform[name] for name in shared}
    stats = {
        "zipf": correlate(counts, {n: zipf[n] for n in shared}),
        "uniform": correlate(counts, {n: uniform[n] for n in shared}),
        "change": correlate(counts, change),
    }
    per_class = {"zipf": zipf, "uniform": uniform, "change": change}
    if reversed_zipf is not None and reversed_counts is not None:
        moved = [n for n in shared if n in reversed_zipf and n in reversed_counts]
        factor = {n: reversed_counts[n] / counts[n] for n in moved}
        reversal = {n: reversed_zipf[n] - zipf[n] for n in moved}
        # correlate() takes integer counts: the factor in thousandths (ranks and Pearson on
        # its log are unchanged by the scale)
        stats["reversal"] = correlate({n: round(1000 * f) for n, f in factor.items()}, reversal)
        per_class |= {"reversed": reversed_zipf, "reversal": reversal, "count_factor": factor}
    ci = {name: s["spearman_ci95"] for name, s in stats.items()}

    def above_zero(name: str) -> bool:
        return ci.get(name) is not None and ci[name][0] > 0

    zipf_holds = above_zero("zipf")
    if above_zero("reversal"):
        verdict = "holds: reversing the frequency ranking moves per-class accuracy with it"
    elif zipf_holds and above_zero("change"):
        verdict = "holds: the change in accuracy follows the change in frequency"
    elif "reversal" in stats:
        verdict = _reversal_not_shown(stats["reversal"]["spearman"], ci["reversal"])
    elif zipf_holds and (ci["uniform"] is None or ci["uniform"][0] <= 0):
        verdict = "holds: the uniform organism's correlation is not distinguishable from 0"
    elif zipf_holds:
        verdict = "does not hold: the uniform organism keeps the correlation"
    else:
        verdict = "not shown: the Zipf organism's correlation is not significant at this size"

    def rho(name: str) -> str:
        value = stats[name]["spearman"]
        return "undefined" if value is None else f"{value:+.3f} {fmt_ci(ci[name])}"

    evidence = (
        f"Spearman with the Zipf caption counts over {len(shared)} classes: Zipf organism "
        f"{rho('zipf')}; uniform organism {rho('uniform')}; per-class change "
        f"(Zipf − uniform) {rho('change')}"
    )
    if "reversal" in stats:
        evidence += (
            f"; reversed ranking: accuracy change (reversed − Zipf) against the factor by "
            f"which each class's captions changed {rho('reversal')}"
        )
    return {
        "finding": "changing the caption frequencies changes per-class accuracy "
        "(the intervention the paper could not run)",
        "evidence": evidence,
        "verdict": verdict,
        "details": {**stats, "per_class": per_class},
    }


def _reversal_not_shown(rho: float | None, ci: list[float] | None) -> str:
    """The verdict when the reversal's interval does not lie above 0."""
    if rho is None or ci is None:
        return "not shown: the reversed organism's per-class accuracy change is undefined"
    if ci[1] < 0:
        return "reversed: per-class accuracy moves against the reversed frequencies"
    return (
        f"not shown at this size: accuracy leans with the reversed frequencies (Spearman "
        f"{rho:+.2f}) but its interval {fmt_ci(ci)} includes 0"
    )
