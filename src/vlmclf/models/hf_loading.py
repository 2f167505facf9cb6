"""The ``hf:<id-or-path>`` loader: read the config, find the family, load the right classes."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from vlmclf.models import compat
from vlmclf.models.families import FamilyAdapter, adapter_for_config
from vlmclf.models.hf import HFImageTextEncoder, HFVisionLanguageModel, wrap_model
from vlmclf.models.image_classifier import (
    HFImageClassifier,
    is_image_classifier_config,
    load_hf_image_classifier,
)


def _describe(ident: str) -> str:
    return f"local folder {ident}" if Path(ident).exists() else f"Hugging Face id {ident!r}"


def load_config(ident: str, trust_remote_code: bool = False) -> Any:
    """``AutoConfig`` for a hub id or local folder, with an error that says which it was."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ident, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        if not trust_remote_code and "trust_remote_code" in str(err):
            raise ValueError(
                f"{_describe(ident)} ships its own model code (as Phi-3-Vision does); pass "
                "--trust-remote-code to run it, only if you trust its source"
            ) from err
        raise ValueError(f"cannot read a model config from {_describe(ident)}: {err}") from err


def load_processor(ident: str, adapter: FamilyAdapter, trust_remote_code: bool = False) -> Any:
    """The checkpoint's saved processor (tokenizer + image processor + chat template)."""
    from transformers import AutoProcessor

    error: Exception | None = None
    try:
        processor = AutoProcessor.from_pretrained(ident, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, ImportError) as err:
        processor, error = None, err
    if processor is not None and hasattr(processor, "image_processor"):
        return processor
    if adapter.video_processor_optional:
        return _image_only_processor(ident, adapter, trust_remote_code)
    if isinstance(error, ImportError) and adapter.processor_class != "AutoProcessor":
        return _family_processor(ident, adapter, trust_remote_code)
    reason = error or f"AutoProcessor gave a {type(processor).__name__} with no image processor"
    raise ValueError(f"cannot load the {adapter.processor_class} of {_describe(ident)}: {reason}")


def _image_only_processor(ident: str, adapter: FamilyAdapter, trust_remote_code: bool) -> Any:
    """The family's processor without its video half, from the saved parts: the real class
    minus its video slot, else (Qwen2-VL on transformers releases where that fails) rebuilt
    from the saved image processor and tokenizer."""
    from transformers import AutoTokenizer

    try:
        image_only = compat.without_video_processor(adapter.processor_cls())
        return image_only.from_pretrained(ident, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, ImportError, AttributeError):
        pass

    image_processor = compat.load_image_processor(ident, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(ident, trust_remote_code=trust_remote_code)
    processor_class = compat.image_only_processor_class(adapter.processor_cls())
    return processor_class(image_processor, tokenizer, chat_template=tokenizer.chat_template)


def _family_processor(ident: str, adapter: FamilyAdapter, trust_remote_code: bool) -> Any:
    """The family's processor class, where ``AutoProcessor`` fails on an import (Pixtral's
    wants torchvision): loaded whole, else from its saved parts with the PIL image processor
    (transformers 5.17 does not fall back to it by itself)."""
    import json

    from transformers import AutoTokenizer
    from transformers.utils import cached_file

    processor_class = adapter.processor_cls()
    try:
        return processor_class.from_pretrained(ident, trust_remote_code=trust_remote_code)
    except ImportError:
        pass
    image_processor = compat.load_image_processor(ident, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(ident, trust_remote_code=trust_remote_code)
    saved_file = cached_file(
        ident, "processor_config.json", _raise_exceptions_for_missing_entries=False
    )
    saved = json.loads(Path(saved_file).read_text(encoding="utf-8")) if saved_file else {}
    accepted = inspect.signature(processor_class.__init__).parameters
    settings = {k: v for k, v in saved.items() if k in accepted and k not in _PROCESSOR_PARTS}
    return processor_class(
        image_processor, tokenizer, chat_template=tokenizer.chat_template, **settings
    )


_PROCESSOR_PARTS = ("self", "image_processor", "tokenizer", "chat_template")


REMOTE_CODE_AUTO_CLASSES = (
    "AutoModelForImageTextToText", "AutoModelForCausalLM",
)  # fmt: skip
"""Auto classes a remote-code VLM's ``auto_map`` may name, in order of preference."""


def model_class_for(config: Any, adapter: FamilyAdapter) -> type:
    """The class that loads the weights: the adapter's, except that a checkpoint with its own
    code (Phi-3-Vision) is loaded through whichever Auto class its ``auto_map`` names."""
    import transformers

    auto_map = getattr(config, "auto_map", None) or {}
    if adapter.model_class.startswith("Auto") and auto_map:
        for name in REMOTE_CODE_AUTO_CLASSES:
            if name in auto_map and hasattr(transformers, name):
                return getattr(transformers, name)
    return adapter.model_cls()


def load_hf_model(
    ident: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    **_: Any,
) -> HFVisionLanguageModel | HFImageTextEncoder | HFImageClassifier:
    """Load a transformers checkpoint as an encoder (CLIP, SigLIP), a VLM or a supervised
    image classifier (ResNet, ViT, ...), by its config."""
    compat.torch_device(device)  # fail on a bad device before reading gigabytes
    config = load_config(ident, trust_remote_code)
    if is_image_classifier_config(config):
        return load_hf_image_classifier(
            ident, config, device=device, dtype=dtype, device_map=device_map,
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
    adapter = adapter_for_config(config)
    processor = load_processor(ident, adapter, trust_remote_code)
    model = model_class_for(config, adapter).from_pretrained(
        ident, config=config, **compat.from_pretrained_kwargs(dtype, device_map, trust_remote_code)
    )
    return wrap_model(
        model,
        processor,
        adapter,
        f"hf:{ident}",
        device=device,
        dtype=dtype,
        placed=device_map is not None,
    )
