"""Supervised classifiers (``--method classifier``): the checkpoint's own head, read as scores.

The head's labels are mapped onto the run's class list once (``label_columns``): an
ImageNet-1k head onto our ImageNet list by index, any other by name. Scores are the
log-probabilities of the run's classes under the full head; with ``--k`` only the offered
classes are scored, as for CLIP.
"""

from __future__ import annotations

import time

from vlmclf.data.classnames import load_class_names
from vlmclf.methods.base import LoadedExample, ScoringMethod
from vlmclf.models.image_classifier import ImageClassifier, class_log_probs, label_columns
from vlmclf.records import Prediction
from vlmclf.spec import RunSpec


class ClassifierMethod(ScoringMethod):
    """Top-1 of a supervised head over the run's classes (restricted to ``--k`` choices)."""

    def __init__(self, model: ImageClassifier, class_names: list[str], spec: RunSpec):
        self.model = model
        self.class_names = class_names
        self.spec = spec
        self.columns = label_columns(model.labels, class_names, load_class_names("imagenet"))

    def preflight(self) -> list[str]:
        return []

    def predict(self, batch: list[LoadedExample]) -> list[Prediction]:
        start = time.perf_counter()
        scores = class_log_probs(self.model.log_probs([item.image for item in batch]), self.columns)
        seconds = (time.perf_counter() - start) / max(1, len(batch))
        return [
            self.scored_record(item, row.tolist(), seconds)
            for item, row in zip(batch, scores, strict=True)
        ]
