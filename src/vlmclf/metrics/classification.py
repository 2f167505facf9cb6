"""Metrics: pure functions of stored predictions and the run's class-name list.

Conventions that hold for every function here:

* **A class is its name.** Class lists can repeat a name (ImageNet has "missile" at 657 and 744,
  "sunglasses" at 836 and 837); every index is mapped to the first index with its name, so
  predicting 744 for a 657 image is correct and per-class results are keyed by unique names.
* **Every answer counts.** An answer is ``ok=True`` even when it is empty, refused, truncated or
  unparseable; it is in every denominator and wrong unless it names the label. Only examples the
  model never answered have ``ok=False``: *data failures* (unreadable image) and *transient
  failures* (the machine's; retried by the next run). They are left out of the headline
  denominators, reported as ``n_data_failed`` / ``n_transient`` (``n_failed`` is both), and
  counted as wrong in ``accuracy_all`` / ``strict_accuracy_all``. While any transient failure
  remains the headline is ``provisional``.
* **No evidence is None, not 0.** With no successful prediction, accuracies, balanced accuracy,
  macro P/R/F1 and CIs are ``None``; ``accuracy_all`` is 0.0 if there were any (failed)
  predictions and ``None`` for empty input.
* **Two correctness rules.** ``contain`` is the paper's rule (the stored ``hit``: the generated
  text contains the class name); where ``hit`` is None it falls back to ``strict``: the matched
  ``pred`` has the label's name. A missing ``pred`` is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from vlmclf.records import Prediction

Rule = Literal["strict", "contain"]

_MAX_ELEMENTS = 2_000_000  # bound on temporary arrays (rows x classes, boots x examples)
_MAX_DISTINCT_FOR_MULTINOMIAL = 64
_EXACT_MCNEMAR_BELOW = 25


def canonical_indices(class_names: Sequence[str]) -> list[int]:
    """For each class index, the first index with the same name."""
    first: dict[str, int] = {}
    return [first.setdefault(name, i) for i, name in enumerate(class_names)]


def _canon(canon: Sequence[int], index: int, p: Prediction, field: str) -> int:
    if not 0 <= index < len(canon):
        raise ValueError(
            f"prediction {p.example_id!r}: {field}={index} is outside the {len(canon)} classes"
        )
    return canon[index]


def _strict(p: Prediction, canon: Sequence[int] | None) -> bool:
    if p.pred is None:
        return False
    if canon is None:
        return p.pred == p.label
    return _canon(canon, p.pred, p, "pred") == _canon(canon, p.label, p, "label")


def _is_correct(p: Prediction, canon: Sequence[int] | None, rule: Rule) -> bool:
    if rule not in ("strict", "contain"):
        raise ValueError(f"rule must be 'strict' or 'contain', not {rule!r}")
    if rule == "contain" and p.hit is not None:
        return bool(p.hit)
    return _strict(p, canon)


def correctness(
    preds: Sequence[Prediction], class_names: Sequence[str], rule: Rule = "contain"
) -> list[bool]:
    """Per successful prediction (ok=True, input order): is it correct under ``rule``?"""
    canon = canonical_indices(class_names)
    return [_is_correct(p, canon, rule) for p in preds if p.ok]


def _mean(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def accuracy(preds: Sequence[Prediction], class_names: Sequence[str] | None = None) -> float | None:
    """The paper's containment accuracy: mean ``hit`` over successful predictions.

    Where ``hit`` is None the strict rule is used; pass ``class_names`` so that it compares
    names (without them it compares indices)."""
    canon = None if class_names is None else canonical_indices(class_names)
    return _mean([_is_correct(p, canon, "contain") for p in preds if p.ok])


def strict_accuracy(preds: Sequence[Prediction], class_names: Sequence[str]) -> float | None:
    """Top-1 accuracy of the matched label, by name; no prediction counts as wrong."""
    return _mean(correctness(preds, class_names, "strict"))


def topk_accuracy(
    preds: Sequence[Prediction], class_names: Sequence[str], k: int = 5
) -> float | None:
    """Share of scored predictions whose label's name is among the k best-scored names.

    Only successful predictions with ``scores`` count; ``None``/NaN entries are classes that
    were not scored and cannot be ranked. Ties go to the lowest index; a name listed twice
    takes its best score and occupies one of the k places. None when nothing was scored.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    canon = canonical_indices(class_names)
    scored = [p for p in preds if p.ok and p.scores is not None]
    if not scored:
        return None
    rows_per_chunk = max(1, _MAX_ELEMENTS // max(1, len(canon)))
    hits = 0
    for start in range(0, len(scored), rows_per_chunk):
        hits += int(_topk_hits(scored[start : start + rows_per_chunk], canon, k).sum())
    return hits / len(scored)


def _topk_hits(chunk: Sequence[Prediction], canon: Sequence[int], k: int) -> np.ndarray:
    """Vectorised top-k: count names ranked strictly before the label's name."""
    n_classes = len(canon)
    for p in chunk:
        if len(p.scores) != n_classes:
            raise ValueError(
                f"prediction {p.example_id!r}: {len(p.scores)} scores for {n_classes} classes"
            )
    scores = np.array([p.scores for p in chunk], dtype=np.float64)  # None -> NaN
    label_cols = np.array([_canon(canon, p.label, p, "label") for p in chunk])
    return topk_hits_matrix(scores, label_cols, canon, k)


def topk_hits_matrix(
    scores: np.ndarray, label_cols: np.ndarray, canon: Sequence[int], k: int
) -> np.ndarray:
    """Per row of ``scores`` (rows x classes, NaN = not scored; modified in place): is the
    canonical label ``label_cols`` among the k best-ranked names?"""
    n_classes = len(canon)
    rank_index = np.broadcast_to(np.arange(n_classes), scores.shape)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(canon):
        groups.setdefault(c, []).append(i)
    duplicates = [members for members in groups.values() if len(members) > 1]
    if duplicates:
        rank_index = rank_index.copy()
        for members in duplicates:
            # The name ranks where its best index ranks: highest score, then lowest index.
            sub = scores[:, members]
            best = np.fmax.reduce(sub, axis=1)
            first_best = np.asarray(members)[np.argmax(sub == best[:, None], axis=1)]
            scores[:, members] = np.nan
            scores[:, members[0]] = best
            rank_index[:, members[0]] = first_best
    rows = np.arange(len(scores))
    label_score = scores[rows, label_cols][:, None]
    label_rank = rank_index[rows, label_cols][:, None]
    ahead = (scores > label_score) | ((scores == label_score) & (rank_index < label_rank))
    return ~np.isnan(label_score[:, 0]) & (ahead.sum(axis=1) < k)


def per_class_accuracy(
    preds: Sequence[Prediction], class_names: Sequence[str], rule: Rule = "strict"
) -> dict[str, float]:
    """Accuracy per class name (``rule``: strict top-1 or the paper's containment), over the
    names that occur as a label among successful predictions, in class-list order."""
    canon = canonical_indices(class_names)
    right: dict[int, int] = {}
    total: dict[int, int] = {}
    for p in preds:
        if p.ok:
            c = _canon(canon, p.label, p, "label")
            total[c] = total.get(c, 0) + 1
            right[c] = right.get(c, 0) + _is_correct(p, canon, rule)
    return {class_names[c]: right[c] / total[c] for c in sorted(total)}


def balanced_accuracy(
    preds: Sequence[Prediction], class_names: Sequence[str], rule: Rule = "strict"
) -> float | None:
    """Mean of per-class accuracies (sklearn's balanced accuracy = macro recall)."""
    per_class = per_class_accuracy(preds, class_names, rule)
    return sum(per_class.values()) / len(per_class) if per_class else None


def precision_recall_f1(preds: Sequence[Prediction], class_names: Sequence[str]) -> dict[str, Any]:
    """Macro precision/recall/F1 (strict, by name) and per-class values.

    Classes are the names that occur as a label or a prediction among successful predictions.
    As in sklearn with ``zero_division=0``, a ratio with a zero denominator is 0. A missing
    ``pred`` is a miss for its label's recall and is not a predicted class.
    """
    canon = canonical_indices(class_names)
    support: dict[int, int] = {}
    predicted: dict[int, int] = {}
    true_pos: dict[int, int] = {}
    for p in preds:
        if not p.ok:
            continue
        label = _canon(canon, p.label, p, "label")
        support[label] = support.get(label, 0) + 1
        if p.pred is not None:
            guess = _canon(canon, p.pred, p, "pred")
            predicted[guess] = predicted.get(guess, 0) + 1
            if guess == label:
                true_pos[label] = true_pos.get(label, 0) + 1
    per_class: dict[str, dict[str, float | int]] = {}
    for c in sorted(set(support) | set(predicted)):
        tp, n_pred, n_true = true_pos.get(c, 0), predicted.get(c, 0), support.get(c, 0)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[class_names[c]] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": n_true,
            "n_predicted": n_pred,
        }

    def macro(key: str) -> float | None:
        values = [v[key] for v in per_class.values()]
        return sum(values) / len(values) if values else None

    return {
        "macro_precision": macro("precision"),
        "macro_recall": macro("recall"),
        "macro_f1": macro("f1"),
        "n_classes": len(per_class),
        "per_class": per_class,
    }


def _bootstrap_means(values: Sequence[float], n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples with replacement.

    A resample's mean depends only on how often each distinct value is drawn, so for few
    distinct values (0/1 correctness, paired differences) the counts are drawn from the
    multinomial directly: the same distribution at O(n_boot x distinct) cost."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap needs a non-empty 1-D sequence of values")
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap values must be finite")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, not {n_boot}")
    rng = np.random.default_rng(seed)
    n = x.size
    distinct, counts = np.unique(x, return_counts=True)
    if distinct.size <= _MAX_DISTINCT_FOR_MULTINOMIAL:
        draws = rng.multinomial(n, counts / n, size=n_boot)
        return draws @ distinct / n
    means = np.empty(n_boot)
    step = max(1, _MAX_ELEMENTS // n)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        means[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def _percentile_interval(means: np.ndarray, alpha: float) -> tuple[float, float]:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), not {alpha}")
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval for the mean of ``values``."""
    return _percentile_interval(_bootstrap_means(values, n_boot, seed), alpha)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Compare two runs on the same examples (aligned sequences, e.g. 0/1 correctness).

    Examples are resampled jointly, so per-example difficulty cancels. Returns the difference
    of means a - b, its percentile CI and a two-sided bootstrap p-value for "no difference"
    (twice the smaller share of resampled differences on either side of 0, capped at 1)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    means = _bootstrap_means(diff, n_boot, seed)
    p_value = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    lo, hi = _percentile_interval(means, alpha)
    return {"diff": float(diff.mean()), "ci": [lo, hi], "p_value": p_value, "n": int(diff.size)}


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict[str, Any]:
    """McNemar's test on paired correctness.

    With fewer than 25 discordant pairs the exact two-sided binomial p-value is used; otherwise
    chi-square with continuity correction, (max(0, |b - c| - 1))^2 / (b + c), 1 d.o.f."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired samples differ in length: {len(a_correct)} vs {len(b_correct)}")
    a_only = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if y and not x)
    discordant = a_only + b_only
    result: dict[str, Any] = {"n": len(a_correct), "a_only": a_only, "b_only": b_only}
    if discordant == 0:
        return result | {"statistic": 0.0, "p_value": 1.0, "method": "exact"}
    if discordant < _EXACT_MCNEMAR_BELOW:
        tail = sum(math.comb(discordant, i) for i in range(min(a_only, b_only) + 1))
        p_value = min(1.0, 2 * tail / 2**discordant)
        return result | {"statistic": float(min(a_only, b_only)), "p_value": p_value,
                         "method": "exact"}  # fmt: skip
    statistic = max(0, abs(a_only - b_only) - 1) ** 2 / discordant
    p_value = math.erfc(math.sqrt(statistic / 2))  # chi-square(1) survival function
    return result | {"statistic": float(statistic), "p_value": p_value, "method": "chi2"}


def paired_correctness(
    preds_a: Sequence[Prediction],
    preds_b: Sequence[Prediction],
    class_names: Sequence[str],
    rule: Rule = "contain",
) -> tuple[list[bool], list[bool]]:
    """Correctness of two runs aligned on the example ids that succeeded in both (sorted by
    id), ready for :func:`paired_bootstrap` and :func:`mcnemar`."""
    canon = canonical_indices(class_names)
    a = {p.example_id: _is_correct(p, canon, rule) for p in preds_a if p.ok}
    b = {p.example_id: _is_correct(p, canon, rule) for p in preds_b if p.ok}
    shared = sorted(a.keys() & b.keys())
    return [a[i] for i in shared], [b[i] for i in shared]


def outcome_counts(preds: Sequence[Prediction]) -> dict[str, int]:
    """How many answers (and which odd ones), data failures and transient failures there are.
    ``n_unparsed``: a non-empty, non-refused answer that maps to no label."""
    answers = [p for p in preds if p.ok]
    flags = [p.flag for p in answers]
    return {
        "n_answers": len(answers),
        "n_empty": flags.count("empty"),
        "n_refused": flags.count("refused"),
        "n_truncated": flags.count("truncated"),
        "n_unparsed": sum(
            1 for p in answers if p.pred is None and p.flag not in ("empty", "refused")
        ),
        "n_data_failed": sum(1 for p in preds if p.outcome == "data_failure"),
        "n_transient": sum(1 for p in preds if p.outcome == "transient_failure"),
    }


def denominator_text(kinds: dict[str, int], n: int) -> str:
    """The headline's denominator in words: what it counts and what it leaves out, and why."""
    odd = [f"{kinds[key]} {word}" for key, word in (("n_empty", "empty"),
           ("n_refused", "refused"), ("n_truncated", "truncated"), ("n_unparsed", "unparsed"))
           if kinds[key]]  # fmt: skip
    text = f"{kinds['n_answers']} answers of {n} examples"
    if odd:
        text += f" ({', '.join(odd)}: counted, as wrong unless they name the label)"
    left_out = []
    if kinds["n_data_failed"]:
        left_out.append(f"{kinds['n_data_failed']} unreadable inputs (never seen by the model)")
    if kinds["n_transient"]:
        left_out.append(f"{kinds['n_transient']} transient failures (retried by the next run)")
    if left_out:
        text += "; left out: " + ", ".join(left_out) + "; accuracy_all counts them as wrong"
    return text


def summarize(
    preds: Sequence[Prediction], class_names: Sequence[str], seed: int = 0
) -> dict[str, Any]:
    """Every headline number of a run as a JSON-serialisable dict (see module conventions)."""
    contain = correctness(preds, class_names, "contain")
    strict = correctness(preds, class_names, "strict")
    n = len(preds)
    prf = precision_recall_f1(preds, class_names)
    kinds = outcome_counts(preds)
    return {
        "n": n,
        "n_ok": len(contain),
        "n_failed": n - len(contain),
        **kinds,
        "provisional": kinds["n_transient"] > 0,
        "denominator": denominator_text(kinds, n),
        "n_no_pred": sum(1 for p in preds if p.ok and p.pred is None),
        "n_scored": sum(1 for p in preds if p.ok and p.scores is not None),
        "n_classes": len(set(class_names)),
        "accuracy": _mean(contain),
        "accuracy_all": sum(contain) / n if n else None,
        "strict_accuracy": _mean(strict),
        "strict_accuracy_all": sum(strict) / n if n else None,
        "top5": topk_accuracy(preds, class_names, k=5),
        "balanced_accuracy": balanced_accuracy(preds, class_names),
        "macro_precision": prf["macro_precision"],
        "macro_recall": prf["macro_recall"],
        "macro_f1": prf["macro_f1"],
        "ci95": list(bootstrap_ci(contain, seed=seed)) if contain else None,
        "strict_ci95": list(bootstrap_ci(strict, seed=seed)) if strict else None,
    }
