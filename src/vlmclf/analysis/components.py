"""Each model's two components, vision encoder and language model, for ``vlmclf attribute``.

Read from the checkpoint's ``config.json`` where it has one (a Hugging Face VLM's
``vision_config`` / ``text_config``, an original LLaVA's ``mm_vision_tower``, a shipped
organism's ``image_encoder`` / ``language_model``), else declared in ``--components FILE``,
which also declares dataset groups (fine-grained or coarse).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmclf.data.readers import read_json_option_file
from vlmclf.organism.load import ORGANISMS, default_weights_dir

COMPONENTS = ("encoder", "llm")
GROUPS = ("fine", "coarse")


def read_components_file(path: str | Path) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """``{"models": {model: {"encoder": ..., "llm": ...}}, "groups": {dataset: "fine"|"coarse"}}``
    (``groups`` optional); errors name the file and the entry."""
    path = Path(path)
    data = read_json_option_file(path, "--components")
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise ValueError(f'{path}: expected {{"models": {{model: {{"encoder", "llm"}}}}, ...}}')
    models = {}
    for model, parts in data.get("models", {}).items():
        if not isinstance(parts, dict) or not all(
            isinstance(parts.get(c), str) and parts[c].strip() for c in COMPONENTS
        ):
            raise ValueError(f"{path}: models.{model}: needs non-empty 'encoder' and 'llm' names")
        models[model] = {c: parts[c].strip() for c in COMPONENTS}
    groups = data.get("groups", {})
    if not isinstance(groups, dict):
        raise ValueError(f"{path}: 'groups' must map dataset names to 'fine' or 'coarse'")
    for dataset, group in groups.items():
        if group not in GROUPS:
            raise ValueError(f"{path}: groups.{dataset}: {group!r} is not 'fine' or 'coarse'")
    return models, dict(groups)


def components_from_config(config: Mapping[str, Any]) -> dict[str, str] | None:
    """A VLM checkpoint's vision tower and language model, named by what its config.json says
    (a name or path where it records one, else the architecture's shape); None when the config
    is not a two-tower VLM's."""
    if isinstance(config.get("image_encoder"), str) and isinstance(
        config.get("language_model"), str
    ):  # the organism's config.json
        return {"encoder": config["image_encoder"], "llm": config["language_model"]}
    vision, text = config.get("vision_config"), config.get("text_config")
    if not isinstance(vision, dict) or not isinstance(text, dict):
        return None
    encoder = config.get("mm_vision_tower") or vision.get("_name_or_path") or _shape(vision)
    llm = text.get("_name_or_path") or _shape(text)
    return {"encoder": str(encoder), "llm": str(llm)}


def _shape(config: Mapping[str, Any]) -> str:
    keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "image_size", "patch_size",
            "vocab_size", "depth", "embed_dim")  # fmt: skip
    parts = [f"{k}={config[k]}" for k in keys if k in config]
    return f"{config.get('model_type', 'model')}({', '.join(parts)})"


def components_of_model(model: str) -> dict[str, str] | None:
    """Components read from a local checkpoint's config.json (``hf:<folder>``, a hub id
    already in the local cache, or a shipped organism); None when there is none to read.
    Never downloads."""
    target = model.split(":", 1)[1] if model.startswith(("hf:", "organism:")) else model
    path: Path | None = Path(target) / "config.json"
    if model.startswith("organism:") and target in ORGANISMS:
        path = default_weights_dir(target) / "config.json"
    if path is None or not path.is_file():
        path = _cached_config(target)
    if path is None:
        return None
    try:
        return components_from_config(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError):
        return None


def _cached_config(repo_id: str) -> Path | None:
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found) if isinstance(found, str) else None
