"""Metrics against hand-computed cases and slow obvious implementations."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from scipy import stats

from vlmclf.metrics import (
    accuracy,
    balanced_accuracy,
    bootstrap_ci,
    canonical_indices,
    mcnemar,
    paired_bootstrap,
    paired_correctness,
    per_class_accuracy,
    precision_recall_f1,
    strict_accuracy,
    summarize,
    topk_accuracy,
)
from vlmclf.metrics import classification as metrics
from vlmclf.records import Prediction as P

NAMES = ["cat", "missile", "dog", "missile", "sunglasses", "sunglasses"]


def hand_case() -> list[P]:
    return [
        P("a", 1, pred=3),  # missile as the other missile: right by name
        P("b", 3, pred=1, hit=True),
        P("c", 0, pred=2, hit=True),  # text contained "cat", matcher picked dog
        P("d", 2, pred=None, hit=False),
        P("e", 4, pred=0, hit=True),
        P("f", 0, ok=False, error="bad image"),
        P("g", 2, pred=2),
        P("h", 1, pred=2, hit=False),
    ]


def test_canonical_indices_map_duplicates_to_first() -> None:
    assert canonical_indices(NAMES) == [0, 1, 2, 1, 4, 4]


def test_hand_case_accuracies() -> None:
    preds = hand_case()
    assert accuracy(preds, NAMES) == pytest.approx(5 / 7)
    assert accuracy(preds) == pytest.approx(4 / 7)  # without names "a" compares 3 != 1
    assert strict_accuracy(preds, NAMES) == pytest.approx(3 / 7)
    assert per_class_accuracy(preds, NAMES) == pytest.approx(
        {"cat": 0.0, "missile": 2 / 3, "dog": 0.5, "sunglasses": 0.0}
    )
    assert list(per_class_accuracy(preds, NAMES)) == ["cat", "missile", "dog", "sunglasses"]
    assert per_class_accuracy(preds, NAMES, rule="contain") == pytest.approx(
        {"cat": 1.0, "missile": 2 / 3, "dog": 0.5, "sunglasses": 1.0}
    )
    assert balanced_accuracy(preds, NAMES) == pytest.approx(7 / 24)


def test_hand_case_precision_recall_f1() -> None:
    prf = precision_recall_f1(hand_case(), NAMES)
    assert prf["n_classes"] == 4
    assert prf["macro_precision"] == pytest.approx(1 / 3)
    assert prf["macro_recall"] == pytest.approx(7 / 24)
    assert prf["macro_f1"] == pytest.approx(0.3)
    dog = prf["per_class"]["dog"]
    assert (dog["support"], dog["n_predicted"]) == (2, 3)
    assert dog["precision"] == pytest.approx(1 / 3) and dog["f1"] == pytest.approx(0.4)
    assert prf["per_class"]["sunglasses"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "n_predicted": 0,
    }  # fmt: skip


def test_hand_case_summary_is_json_and_counts_failures() -> None:
    s = summarize(hand_case(), NAMES)
    json.dumps(s, allow_nan=False)
    assert (s["n"], s["n_ok"], s["n_failed"], s["n_no_pred"]) == (8, 7, 1, 1)
    assert s["accuracy"] == pytest.approx(5 / 7) and s["accuracy_all"] == pytest.approx(5 / 8)
    assert s["strict_accuracy"] == pytest.approx(3 / 7)
    assert s["strict_accuracy_all"] == pytest.approx(3 / 8)
    assert s["top5"] is None and s["n_classes"] == 4
    assert s["macro_f1"] == pytest.approx(0.3) and s["balanced_accuracy"] == pytest.approx(7 / 24)
    lo, hi = s["ci95"]
    assert lo <= s["accuracy"] <= hi and isinstance(lo, float)


def test_all_failed_and_empty_inputs() -> None:
    failed = [P.failed(f"x{i}", i % 3, "oom") for i in range(5)]
    s = summarize(failed, NAMES)
    json.dumps(s, allow_nan=False)
    assert s["n_failed"] == 5 and s["accuracy"] is None and s["accuracy_all"] == 0.0
    assert s["ci95"] is None and s["macro_f1"] is None and s["balanced_accuracy"] is None
    empty = summarize([], NAMES)
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["accuracy_all"] is None


def test_out_of_range_label_names_the_example() -> None:
    with pytest.raises(ValueError, match="'bad'.*label=9"):
        strict_accuracy([P("bad", 9, pred=0)], NAMES)


# ----- top-k -------------------------------------------------------------------------------
def slow_topk_hit(p: P, names: list[str], k: int) -> bool:
    ranked = [i for i, s in enumerate(p.scores) if s is not None and not math.isnan(s)]
    ranked.sort(key=lambda i: (-p.scores[i], i))
    top: list[str] = []
    for i in ranked:
        if names[i] not in top:
            top.append(names[i])
    return names[p.label] in top[:k]


def test_topk_hand_cases_duplicates_ties_and_unscored() -> None:
    names = ["a", "m", "b", "m", "c"]
    scores = [0.5, 0.9, 0.7, 0.95, None]
    assert topk_accuracy([P("x", 2, scores=scores)], names, k=2) == 1.0  # m counts once
    assert topk_accuracy([P("x", 0, scores=scores)], names, k=2) == 0.0
    assert topk_accuracy([P("x", 4, scores=scores)], names, k=5) == 0.0  # label not scored
    ties = [0.5] * 5
    assert topk_accuracy([P("x", 4, scores=ties)], names, k=3) == 0.0  # lowest index first
    assert topk_accuracy([P("x", 4, scores=ties)], names, k=4) == 1.0
    assert topk_accuracy([P("x", 3, scores=ties)], names, k=2) == 1.0  # 3 is "m" at 1
    mixed = [P("x", 0, scores=[1, 0, 0, 0, 0]), P("y", 0), P("z", 0, ok=False, scores=[0] * 5)]
    assert topk_accuracy(mixed, names, k=1) == 1.0  # unscored and failed are skipped
    assert topk_accuracy([P("y", 0)], names) is None


@pytest.mark.parametrize("small_chunks", [False, True])
def test_topk_matches_slow_ranking_on_random_cases(monkeypatch, small_chunks) -> None:
    if small_chunks:
        monkeypatch.setattr(metrics, "_MAX_ELEMENTS", 50)
    rng = random.Random(7)
    names = ["n0", "n1", "n2", "n1", "n4", "n5", "n5", "n5", "n8", "n9", "n0", "n11"]
    values = [None, math.nan, -math.inf, -1.0, 0.0, 0.0, 0.5, 1.0, 2.0, math.inf]
    preds = [
        P(f"e{j}", rng.randrange(len(names)), scores=[rng.choice(values) for _ in names])
        for j in range(400)
    ]
    for k in range(1, 8):
        expected = sum(slow_topk_hit(p, names, k) for p in preds) / len(preds)
        assert topk_accuracy(preds, names, k=k) == pytest.approx(expected), k
    assert 0 < topk_accuracy(preds, names, k=3) < 1


# ----- strict / P/R/F1 against slow definitions and sklearn ---------------------------------
def random_preds(seed: int, names: list[str], n: int) -> list[P]:
    rng = random.Random(seed)
    out = []
    for j in range(n):
        label = rng.randrange(len(names))
        if rng.random() < 0.1:
            out.append(P.failed(f"e{j}", label, "x"))
            continue
        pred = rng.choice([None, label, rng.randrange(len(names))])
        out.append(P(f"e{j}", label, pred=pred, hit=rng.choice([None, True, False])))
    return out


def test_strict_and_macro_metrics_match_slow_definitions() -> None:
    names = ["a", "b", "a", "c", "d", "d", "e"]
    preds = random_preds(3, names, 500)
    ok = [p for p in preds if p.ok]
    right = [p.pred is not None and names[p.pred] == names[p.label] for p in ok]
    assert strict_accuracy(preds, names) == pytest.approx(sum(right) / len(ok))
    contain = [p.hit if p.hit is not None else r for p, r in zip(ok, right, strict=True)]
    assert accuracy(preds, names) == pytest.approx(sum(contain) / len(ok))
    classes = {names[p.label] for p in ok} | {names[p.pred] for p in ok if p.pred is not None}
    per = {}
    for c in classes:
        tp = sum(1 for p in ok if p.pred is not None and names[p.pred] == c == names[p.label])
        n_pred = sum(1 for p in ok if p.pred is not None and names[p.pred] == c)
        n_true = sum(1 for p in ok if names[p.label] == c)
        prec, rec = (tp / n_pred if n_pred else 0.0), (tp / n_true if n_true else 0.0)
        per[c] = (prec, rec, 2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    prf = precision_recall_f1(preds, names)
    assert set(prf["per_class"]) == classes
    for i, key in enumerate(["macro_precision", "macro_recall", "macro_f1"]):
        assert prf[key] == pytest.approx(sum(v[i] for v in per.values()) / len(per))
    recalls = [per[c][1] for c in classes if any(names[p.label] == c for p in ok)]
    assert balanced_accuracy(preds, names) == pytest.approx(sum(recalls) / len(recalls))


def test_macro_metrics_agree_with_sklearn() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    names = ["a", "b", "a", "c", "d", "e", "f"]
    preds = [p for p in random_preds(5, names, 300) if p.ok and p.pred is not None]
    y_true = [names[p.label] for p in preds]
    y_pred = [names[p.pred] for p in preds]
    prec, rec, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )
    prf = precision_recall_f1(preds, names)
    assert (prf["macro_precision"], prf["macro_recall"], prf["macro_f1"]) == pytest.approx(
        (prec, rec, f1)
    )
    assert balanced_accuracy(preds, names) == pytest.approx(
        skm.balanced_accuracy_score(y_true, y_pred)
    )


# ----- bootstrap and paired tests ----------------------------------------------------------
def slow_bootstrap_ci(values, n_boot, seed, alpha=0.05):
    rng = np.random.default_rng(seed)
    x = np.asarray(values, dtype=float)
    means = [x[rng.integers(0, len(x), len(x))].mean() for _ in range(n_boot)]
    return tuple(np.quantile(means, [alpha / 2, 1 - alpha / 2]))


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_bootstrap_ci_matches_slow_bootstrap_and_contains_mean(kind) -> None:
    rng = np.random.default_rng(1)
    values = rng.random(600) < 0.3 if kind == "binary" else rng.normal(2.0, 1.0, 600)
    lo, hi = bootstrap_ci(values, n_boot=4000, seed=3)
    assert lo < float(np.mean(values)) < hi
    slo, shi = slow_bootstrap_ci(values, n_boot=4000, seed=11)
    assert lo == pytest.approx(slo, abs=0.01) and hi == pytest.approx(shi, abs=0.01)
    se = float(np.std(values) / np.sqrt(len(values)))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_bootstrap_ci_shrinks_with_n_and_is_deterministic() -> None:
    rng = np.random.default_rng(2)
    widths = []
    for n in (100, 1_000, 10_000):
        lo, hi = bootstrap_ci(rng.random(n) < 0.6, seed=0)
        widths.append(hi - lo)
    assert widths[0] > 2.5 * widths[1] > 6 * widths[2]
    values = [1, 0, 1, 1, 0, 1, 0, 1] * 20
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])


def test_bootstrap_ci_handles_50k_examples() -> None:
    values = np.random.default_rng(0).random(50_000) < 0.7
    lo, hi = bootstrap_ci(values, n_boot=1000)
    assert lo < values.mean() < hi
    assert hi - lo < 0.02  # about 4 standard errors of a 50k-sample proportion


def test_paired_bootstrap() -> None:
    rng = np.random.default_rng(4)
    a = rng.random(400) < 0.8
    same = paired_bootstrap(a, a)
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0
    b = a & (rng.random(400) < 0.85)  # b loses ~15% of a's hits
    res = paired_bootstrap(a, b, seed=1)
    assert res["diff"] == pytest.approx(a.mean() - b.mean())
    assert 0 < res["ci"][0] < res["diff"] < res["ci"][1] and res["p_value"] < 0.01
    noisy = paired_bootstrap(a, rng.random(400) < 0.8, seed=1)
    assert noisy["ci"][0] < 0 < noisy["ci"][1] or noisy["p_value"] > 0.05
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1, 0], [1])


def test_mcnemar_exact_and_chi_square() -> None:
    a = [True] * 10 + [False] * 2 + [True] * 30
    b = [False] * 10 + [True] * 2 + [True] * 30
    res = mcnemar(a, b)
    assert (res["a_only"], res["b_only"], res["method"]) == (10, 2, "exact")
    assert res["p_value"] == pytest.approx(158 / 4096)
    assert res["p_value"] == pytest.approx(stats.binomtest(2, 12, 0.5).pvalue)
    a = [True] * 30 + [False] * 10 + [False] * 5
    b = [False] * 30 + [True] * 10 + [False] * 5
    res = mcnemar(a, b)
    assert res["method"] == "chi2" and res["statistic"] == pytest.approx(19**2 / 40)
    assert res["p_value"] == pytest.approx(stats.chi2.sf(19**2 / 40, 1))
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0


def test_paired_correctness_aligns_on_shared_successes() -> None:
    run_a = [P("x", 0, pred=0), P("y", 1, pred=3), P("z", 2, ok=False), P("w", 2, pred=0)]
    run_b = [P("w", 2, pred=2), P("y", 1, pred=2), P("x", 0, pred=0), P("z", 2, pred=2)]
    a, b = paired_correctness(run_a, run_b, NAMES)
    assert (a, b) == ([False, True, True], [True, True, False])  # ids w, x, y
