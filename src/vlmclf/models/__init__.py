"""Models behind small protocols: load any of them with ``load_model("prefix:name")``.

Importing this package is cheap: transformers and the model code load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from vlmclf.models.base import ChatAPI, HiddenFeatures, ImageTextEncoder, VisionLanguageModel
from vlmclf.models.registry import (
    ModelLoader,
    is_encoder,
    is_vlm,
    known_prefixes,
    load_model,
    register_model_loader,
)

_LAZY = {
    "FamilyAdapter": "vlmclf.models.families",
    "adapter_for_config": "vlmclf.models.families",
    "adapter_by_name": "vlmclf.models.families",
    "HFVisionLanguageModel": "vlmclf.models.hf",
    "HFImageTextEncoder": "vlmclf.models.hf",
    "save_random_model": "vlmclf.models.random_models",
    "build_random": "vlmclf.models.random_models",
    "RANDOM_FAMILIES": "vlmclf.models.random_models",
}

__all__ = [
    "ChatAPI",
    "HiddenFeatures",
    "ImageTextEncoder",
    "ModelLoader",
    "VisionLanguageModel",
    "is_encoder",
    "is_vlm",
    "known_prefixes",
    "load_model",
    "register_model_loader",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmclf.models' has no attribute {name!r}")
