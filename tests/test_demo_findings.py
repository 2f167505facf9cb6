"""The demo's verdict rules and re-scoring, on small synthetic inputs (no model, fast).

Each rule is checked on data built to land on each side of it: a claim holds only when its
interval excludes the null, is reported reversed when the interval is on the other side, and
is "not shown" otherwise. Re-scoring is checked against independent slow implementations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlmclf.analysis.demo import findings as judge
from vlmclf.analysis.demo.rescoring import (
    aligned_correctness,
    crossfit_cfg,
    fold_of,
    joint_bootstrap,
    restrict_to_k,
)
from vlmclf.data.choices import sample_choices
from vlmclf.records import Prediction


def flags(n_right: int, n: int) -> np.ndarray:
    """``n_right`` ones then zeros (images in a fixed order)."""
    return np.array([1.0] * n_right + [0.0] * (n - n_right))


def shuffled(column: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(column)


# ---------------------------------------------------------------------- finding 1
def test_clip_above_holds_only_for_methods_whose_interval_is_above_zero():
    n = 200
    columns = {"CLIP": flags(180, n), "far": flags(100, n), "close": flags(178, n)}
    finding = judge.clip_above(columns, "CLIP", ["far", "close"])
    assert finding["verdict"] == "holds for 1 of 2 methods"
    far, close = finding["details"]
    assert far["ci95"][0] > 0 and close["ci95"][0] <= 0 <= close["ci95"][1]
    assert judge.clip_above(columns, "CLIP", ["far"])["verdict"] == "holds"


def test_orderings_hold_reverse_or_are_not_shown():
    n = 300
    base = shuffled(flags(150, n), 1)
    better = np.maximum(base, shuffled(flags(90, n), 2))  # right wherever base is, and more
    columns = {"gen": base, "lik": better, "cfg": better.copy(), "worse": base * 0}
    held = judge.orderings(columns, [("lik", "gen")])
    assert held["verdict"] == "holds" and held["details"][0]["ci95"][0] > 0
    mixed = judge.orderings(columns, [("lik", "gen"), ("cfg", "lik"), ("worse", "gen")])
    verdicts = [row["verdict"] for row in mixed["details"]]
    assert verdicts[0] == "holds"
    assert verdicts[1].startswith("not shown")  # identical columns: interval [0, 0] includes 0
    assert verdicts[2] == "reversed"
    assert "cfg > lik: not shown" in mixed["verdict"]
    assert "worse > gen: reversed" in mixed["verdict"]


# ---------------------------------------------------------------------- finding 2
def test_probe_share_of_gap_rules():
    n = 400
    clip = flags(360, n)
    vlm = flags(200, n)
    columns = {"CLIP": clip, "VLM": vlm, "most": flags(340, n), "some": flags(250, n)}
    most = judge.probe_recovers(columns, "CLIP", "VLM", "most")
    assert most["verdict"] == "holds"
    assert most["details"]["share"] == pytest.approx((340 - 200) / (360 - 200))
    assert judge.probe_recovers(columns, "CLIP", "VLM", "some")["verdict"].startswith("partly")
    no_gap = {"CLIP": vlm, "VLM": vlm, "most": clip}
    assert judge.probe_recovers(no_gap, "CLIP", "VLM", "most")["verdict"].startswith(
        "not applicable"
    )


# ---------------------------------------------------------------------- finding 3
def test_finetune_reaches_clip_needs_a_gain_and_a_lead_below_the_margin():
    n = 400
    columns = {
        "CLIP": flags(340, n), "base": flags(200, n), "level": flags(340, n),
        "short": flags(260, n), "above": flags(390, n), "same": flags(200, n),
    }  # fmt: skip
    assert judge.finetune_reaches(columns, "CLIP", "base", "level")["verdict"] == "holds"
    short = judge.finetune_reaches(columns, "CLIP", "base", "short")["verdict"]
    assert short == "partly: fine-tuning helps but CLIP's level is not reached"
    level = shuffled(flags(216, 400), 5)  # as accurate as CLIP, right on other images
    close = {"CLIP": flags(216, 400), "base": flags(120, 400), "level": level}
    undecided = judge.finetune_reaches(close, "CLIP", "base", "level")["verdict"]
    assert undecided.startswith("partly") and "not distinguishable" in undecided
    assert "above CLIP" in judge.finetune_reaches(columns, "CLIP", "base", "above")["verdict"]
    assert judge.finetune_reaches(columns, "CLIP", "base", "same")["verdict"] == "does not hold"


# ---------------------------------------------------------------------- finding 4
def test_label_set_size_trend_and_its_reversal():
    n = 2000
    # CLIP errs on 10% at K=10 and 2% at K=2; the VLM on 40% and 16%: the gap narrows
    # (0.30 -> 0.14) while the VLM's error over CLIP's grows (4 -> 8).
    columns = {"clip@10": flags(1800, n), "vlm@10": flags(1200, n),
               "clip@2": flags(1960, n), "vlm@2": flags(1680, n)}  # fmt: skip
    finding = judge.label_set_size(columns, [2, 10])
    assert finding["verdict"] == "holds"
    curve = {row["k"]: row for row in finding["details"]["curve"]}
    assert curve[10]["gap"] == pytest.approx(0.30) and curve[2]["gap"] == pytest.approx(0.14)
    assert curve[2]["error_ratio"] == pytest.approx(8.0)
    widening = dict(columns, **{"vlm@2": flags(500, n)})
    verdict = judge.label_set_size(widening, [2, 10])["verdict"]
    assert "reversed: the gap widens" in verdict


def test_error_ratio_is_undefined_without_clip_errors():
    columns = {"clip@2": flags(10, 10), "vlm@2": flags(5, 10)}
    assert math.isnan(judge.error_ratio("vlm@2", "clip@2")(columns))


# ---------------------------------------------------------------------- finding 5
COUNTS = {f"c{i}": 2**i for i in range(10)}


def test_frequency_intervention_holds_when_the_change_follows_the_frequencies():
    zipf = {f"c{i}": 0.3 + 0.07 * i for i in range(10)}
    uniform = {f"c{i}": 0.6 + 0.01 * ((i * 7) % 3) for i in range(10)}
    finding = judge.frequency_intervention(zipf, uniform, COUNTS)
    assert finding["verdict"].startswith("holds")
    assert finding["details"]["zipf"]["spearman"] == pytest.approx(1.0)
    assert finding["details"]["change"]["spearman_ci95"][0] > 0


def test_frequency_intervention_fails_when_uniform_keeps_the_correlation():
    zipf = {f"c{i}": 0.3 + 0.07 * i for i in range(10)}
    finding = judge.frequency_intervention(zipf, dict(zipf), COUNTS)
    # the same accuracies: uniform keeps the correlation and the change is 0 everywhere
    assert finding["verdict"].startswith("does not hold")
    flat = {f"c{i}": 0.5 for i in range(10)}
    assert judge.frequency_intervention(flat, zipf, COUNTS)["verdict"].startswith("not shown")


# ---------------------------------------------------------------------- re-scoring
NAMES = ["cat", "dog", "bird", "fish"]


def likelihood_predictions(n: int, seed: int) -> list[Prediction]:
    """Stored-likelihood-shaped predictions: per-token log-probs, an image-biased class."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = int(rng.integers(len(NAMES)))
        logprobs = {
            name: [float(v) for v in rng.normal(-3 + (2.0 if j == label else 0.0) - j, 1, 2)]
            for j, name in enumerate(NAMES)
        }
        scores = [sum(logprobs[name]) for name in NAMES]
        pred = int(np.argmax(scores))
        out.append(Prediction(example_id=f"e{i}", label=label, scores=scores, pred=pred,
                              hit=pred == label, extra={"token_logprobs": logprobs}))  # fmt: skip
    return out


def brute_force_cfg(predictions: list[Prediction], grid: list[float]) -> list[float]:
    """Independent: the dataset-mean prior, then per fold the t with the best accuracy on the
    other fold (ties: closest to 1, then smaller), by plain loops."""
    prior = {name: np.mean([sum(p.extra["token_logprobs"][name]) for p in predictions])
             for name in NAMES}  # fmt: skip
    chosen = []
    for fold in (0, 1):
        others = [p for p in predictions if fold_of(p.example_id) != fold]
        best = None
        for t in grid:
            right = 0
            for p in others:
                guided = [t * sum(p.extra["token_logprobs"][n]) + (1 - t) * prior[n] for n in NAMES]
                right += int(np.argmax(guided) == p.label)
            key = (right, -abs(t - 1), -t)
            if best is None or key > best[0]:
                best = (key, t)
        chosen.append(best[1])
    return chosen


def test_crossfit_cfg_matches_a_brute_force_choice_per_fold():
    predictions = likelihood_predictions(60, seed=3)
    grid = [0.0, 0.5, 1.0, 2.0, 4.0]
    guided, ts = crossfit_cfg(predictions, NAMES, grid)
    assert ts == brute_force_cfg(predictions, grid)
    assert [p.example_id for p in guided] == [p.example_id for p in predictions]
    assert all(p.extra["cfg"] == ts[p.extra["cfg_fold"]] for p in guided)
    assert {p.extra["cfg_fold"] for p in guided} == {0, 1}


def test_restrict_to_k_offers_the_k_draw_and_keeps_the_true_class():
    predictions = likelihood_predictions(30, seed=4)
    for k in (2, 3):
        restricted = restrict_to_k(predictions, NAMES, k)
        for before, after in zip(predictions, restricted, strict=True):
            offered = sample_choices(before.label, NAMES, k, "fixed", 0, before.example_id)
            assert sorted(offered) == after.choices and before.label in offered
            best = max(offered, key=lambda i: before.scores[i])
            assert after.pred == best and after.hit == (best == before.label)
    # with every class offered nothing changes
    full = restrict_to_k(predictions, NAMES, len(NAMES))
    assert [p.pred for p in full] == [p.pred for p in predictions]


def test_aligned_correctness_uses_the_ids_every_run_answered():
    a = [Prediction(example_id=f"e{i}", label=0, pred=0, hit=True) for i in range(5)]
    b = [Prediction(example_id=f"e{i}", label=0, pred=1, hit=False) for i in (4, 2, 0)]
    b.append(Prediction(example_id="e1", label=0, ok=False, error="decode"))
    columns = aligned_correctness({"a": a, "b": b}, NAMES)
    assert columns["a"].tolist() == [1.0, 1.0, 1.0] and columns["b"].tolist() == [0.0] * 3


def test_joint_bootstrap_is_deterministic_and_drops_undefined_resamples():
    columns = {"x": flags(3, 20)}
    value, ci = joint_bootstrap(columns, lambda c: float(c["x"].mean()))
    assert value == 0.15 and ci == joint_bootstrap(columns, lambda c: float(c["x"].mean()))[1]
    _, none = joint_bootstrap(columns, lambda c: math.nan)
    assert none is None


def test_frequency_intervention_by_reversal_holds_when_accuracy_moves_with_the_counts():
    zipf = {f"c{i}": 0.3 + 0.07 * i for i in range(10)}  # easy classes are the frequent ones
    reversed_counts = {f"c{i}": 2 ** (9 - i) for i in range(10)}
    # accuracy moves with log(count factor), on top of each class's own difficulty
    moved = {f"c{i}": zipf[f"c{i}"] + 0.03 * (9 - 2 * i) for i in range(10)}
    finding = judge.frequency_intervention(
        zipf, dict(zipf), COUNTS, reversed_zipf=moved, reversed_counts=reversed_counts
    )
    assert finding["verdict"].startswith("holds: reversing")
    assert finding["details"]["reversal"]["spearman"] == pytest.approx(1.0)
    factor = finding["details"]["per_class"]["count_factor"]
    assert factor["c0"] == pytest.approx(512.0) and factor["c9"] == pytest.approx(1 / 512)
    assert "reversed ranking" in finding["evidence"]


def test_frequency_intervention_by_reversal_fails_when_accuracy_stays():
    zipf = {f"c{i}": 0.3 + 0.07 * i for i in range(10)}
    reversed_counts = {f"c{i}": 2 ** (9 - i) for i in range(10)}
    finding = judge.frequency_intervention(
        zipf, dict(zipf), COUNTS, reversed_zipf=dict(zipf), reversed_counts=reversed_counts
    )
    assert finding["verdict"].startswith("not shown")
    against = {f"c{i}": zipf[f"c{i}"] - 0.03 * (9 - 2 * i) for i in range(10)}
    opposite = judge.frequency_intervention(
        zipf, dict(zipf), COUNTS, reversed_zipf=against, reversed_counts=reversed_counts
    )
    assert opposite["verdict"].startswith("reversed")
