"""CLIP-style zero-shot classification: cosine similarity to one text embedding per class.

Text embeddings are computed once per (class list, templates); with several templates the class
embedding is the mean of the normalised template embeddings, renormalised (CLIP's ensembling).
"""

from __future__ import annotations

import time

import torch

from vlmclf.methods.base import LoadedExample, ScoringMethod
from vlmclf.models.base import ImageTextEncoder
from vlmclf.records import Prediction
from vlmclf.spec import RunSpec

TEXT_BATCH = 256


def class_text_embeddings(
    encoder: ImageTextEncoder, class_names: list[str], templates: list[str]
) -> torch.Tensor:
    """One normalised embedding per class name, ensembled over templates: shape (C, D)."""
    per_template = []
    for template in templates:
        texts = [template.format(name) for name in class_names]
        chunks = [
            encoder.encode_texts(texts[i : i + TEXT_BATCH])
            for i in range(0, len(texts), TEXT_BATCH)
        ]
        per_template.append(torch.cat(chunks))
    mean = torch.stack(per_template).mean(dim=0)
    return torch.nn.functional.normalize(mean.float(), dim=-1)


class ZeroShotMethod(ScoringMethod):
    """Zero-shot CLIP; with ``spec.k`` set, scores only the sampled choices (closed world)."""

    def __init__(
        self, encoder: ImageTextEncoder, class_names: list[str], spec: RunSpec, templates: list[str]
    ):
        self.encoder = encoder
        self.class_names = class_names
        self.spec = spec
        self.text = class_text_embeddings(encoder, class_names, templates)

    def preflight(self) -> list[str]:
        return []

    def predict(self, batch: list[LoadedExample]) -> list[Prediction]:
        start = time.perf_counter()
        image_embeddings = self.encoder.encode_images([item.image for item in batch]).float()
        similarity = image_embeddings @ self.text.T
        seconds = (time.perf_counter() - start) / max(1, len(batch))
        return [
            self.scored_record(item, row.tolist(), seconds)
            for item, row in zip(batch, similarity, strict=True)
        ]
