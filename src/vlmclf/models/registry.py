"""``load_model("prefix:name")``: one entry point for every source of models.

Built in: ``hf:<id-or-path>``, ``random:<family>``, ``open_clip:<arch>:<pretrained-or-path>``.
Other subpackages add prefixes (``organism:``, ``openai:``, ...) with ``register_model_loader``
when imported; ``load_model`` imports the known plugin modules on a miss, so callers never need
to import them first. Heavy imports (torch models, transformers) happen inside the loaders.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from vlmclf.models.base import ImageTextEncoder, VisionLanguageModel

ModelLoader = Callable[..., Any]
"""``loader(name, *, device, dtype, device_map, trust_remote_code, seed) -> model``; a loader
takes ``**kwargs`` and ignores the options that do not concern it."""

PLUGIN_MODULES = ("vlmclf.models.api", "vlmclf.organism")
_LOADERS: dict[str, ModelLoader] = {}
_plugins_imported = False


def register_model_loader(prefix: str, loader: ModelLoader) -> None:
    """Make ``load_model(f"{prefix}:...")`` call ``loader``. Re-registering replaces."""
    if not prefix or ":" in prefix:
        raise ValueError(f"a model prefix must be non-empty and contain no ':', got {prefix!r}")
    _LOADERS[prefix] = loader


def known_prefixes() -> list[str]:
    _import_plugins()
    return sorted(_LOADERS)


def _import_plugins() -> None:
    """Import the subpackages that register prefixes; a missing one is simply not there yet."""
    global _plugins_imported
    if _plugins_imported:
        return
    _plugins_imported = True
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name is None or not module.startswith(err.name):
                raise


def split_spec(spec: str) -> tuple[str, str]:
    """``"hf:llava-hf/llava-1.5-7b-hf"`` -> ``("hf", "llava-hf/llava-1.5-7b-hf")``."""
    prefix, sep, name = spec.partition(":")
    if not sep or not prefix or not name:
        raise ValueError(
            f"model spec {spec!r} must look like 'prefix:name' "
            f"(known prefixes: {', '.join(known_prefixes())}, and for API models openai, "
            "anthropic, gemini)"
        )
    return prefix, name


def loader_for(spec: str) -> ModelLoader:
    """The loader of the spec's prefix, or a ValueError naming the known ones; loads nothing,
    so a mistyped model is refused before any work."""
    prefix, _ = split_spec(spec)
    if prefix not in _LOADERS:
        _import_plugins()
    loader = _LOADERS.get(prefix)
    if loader is None:
        raise ValueError(
            f"unknown model prefix {prefix!r} in {spec!r}; known prefixes: "
            f"{', '.join(known_prefixes())}, and for API models openai, anthropic, gemini"
        )
    return loader


def load_model(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> ImageTextEncoder | VisionLanguageModel:
    """Load the model ``spec`` names, e.g. ``hf:/models/llava``, ``random:qwen2_vl``.

    ``dtype``: float32, float16 or bfloat16. ``device``: cpu, cuda, cuda:N or mps.
    ``device_map="auto"`` is passed to ``from_pretrained`` (then ``device`` is not used).
    ``seed`` fixes the weights of ``random:`` models.
    """
    loader = loader_for(spec)
    _, name = split_spec(spec)
    return loader(
        name,
        device=device,
        dtype=dtype,
        device_map=device_map,
        trust_remote_code=trust_remote_code,
        seed=seed,
    )


def check_spec(spec: str) -> None:
    """ValueError (one line) unless ``spec`` names a local model kind this vlmclf can load;
    loads nothing, so a command can check it before it stores anything."""
    loader_for(spec)


def is_encoder(model: object) -> bool:
    """True for CLIP-style dual encoders."""
    return isinstance(model, ImageTextEncoder)


def is_vlm(model: object) -> bool:
    """True for open-weight generative VLMs (API chat models are neither)."""
    return isinstance(model, VisionLanguageModel)


def _load_hf(name: str, **options: Any) -> Any:
    from vlmclf.models.hf_loading import load_hf_model

    return load_hf_model(name, **options)


def _load_random(name: str, **options: Any) -> Any:
    from vlmclf.models.random_models import load_random_model

    return load_random_model(name, **options)


def _load_open_clip(name: str, **options: Any) -> Any:
    from vlmclf.models.open_clip_encoder import load_open_clip_model

    return load_open_clip_model(name, **options)


register_model_loader("hf", _load_hf)
register_model_loader("random", _load_random)
register_model_loader("open_clip", _load_open_clip)
