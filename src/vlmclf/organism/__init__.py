"""The organism: a small but pretrained VLM and CLIP that run offline.

``organism:vlm`` is LLaVA-shaped (frozen EfficientNet-Lite0 -> trained MLP projector -> frozen
SmolLM2-135M-Instruct); ``organism:clip`` is LiT-shaped (frozen EfficientNet-Lite0 and MiniLM,
trained linear heads). Only the projector and the heads are trained by this project, and they
ship in ``weights/``; ``train_organism`` reproduces them.

Importing this package is cheap (the model registry imports it to learn the ``organism:``
prefix); torch models and transformers load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from vlmclf.models.registry import register_model_loader

_LAZY = {
    "OrganismCLIP": "vlmclf.organism.clip",
    "OrganismVLM": "vlmclf.organism.vlm",
    "load_organism": "vlmclf.organism.load",
    "train_organism": "vlmclf.organism.train",
}

__all__ = [*_LAZY, "load_from_registry"]


def load_from_registry(name: str, **options: Any) -> Any:
    """``load_model("organism:vlm" | "organism:clip", ...)``: the shipped weights, or with
    ``organism:vlm@DIR`` the ones ``vlmclf organism train`` or ``vlmclf finetune`` wrote to DIR."""
    from vlmclf.organism.load import load_organism

    kind, _, weights_dir = name.partition("@")
    return load_organism(
        kind,
        device=options.get("device") or "cpu",
        dtype=options.get("dtype") or "float32",
        seed=options.get("seed") or 0,
        weights_dir=weights_dir or None,
    )


register_model_loader("organism", load_from_registry)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmclf.organism' has no attribute {name!r}")
