"""Metrics: pure functions of stored predictions and the run's class-name list.

``classification`` works on Prediction records (accuracy, top-k, per-class, P/R/F1, bootstrap
intervals, paired tests, the run summary); ``columnar`` gives the same numbers from numpy column
chunks for runs too large for one object per prediction. Imports only ``vlmclf.records``.
"""

from vlmclf.metrics.classification import (
    Rule,
    accuracy,
    balanced_accuracy,
    bootstrap_ci,
    canonical_indices,
    correctness,
    denominator_text,
    mcnemar,
    outcome_counts,
    paired_bootstrap,
    paired_correctness,
    per_class_accuracy,
    precision_recall_f1,
    strict_accuracy,
    summarize,
    topk_accuracy,
    topk_hits_matrix,
)

__all__ = [
    "Rule",
    "accuracy",
    "balanced_accuracy",
    "bootstrap_ci",
    "canonical_indices",
    "correctness",
    "denominator_text",
    "mcnemar",
    "outcome_counts",
    "paired_bootstrap",
    "paired_correctness",
    "per_class_accuracy",
    "precision_recall_f1",
    "strict_accuracy",
    "summarize",
    "topk_accuracy",
    "topk_hits_matrix",
]
