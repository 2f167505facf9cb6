"""Saving and loading the organism's trained parts, and ``load_organism`` for the registry.

A weights folder holds ``config.json`` (what was built), one small safetensors file (the VLM's
projector or the CLIP's heads) and ``training_record.json`` (how it was trained, with the one
command that reproduces it). Shipped organisms (``ORGANISMS``): ``organism:vlm`` and
``organism:clip`` (what ``vlmclf organism train`` wrote), ``organism:vlm-finetuned`` (the VLM's
projector fine-tuned on Fashion-MNIST labels by ``vlmclf finetune``), and the two frequency
interventions: ``organism:vlm-uniform`` (a VLM whose projector saw every class in equally many
captions) and ``organism:vlm-reversed`` (the Zipf law with the ``vlm`` ranking reversed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from vlmclf.organism.clip import ContrastiveHeads, OrganismCLIP
from vlmclf.organism.components import (
    IMAGE_ENCODER,
    IMAGE_RESOLUTION,
    NUM_VISUAL_TOKENS,
    SMOLLM2_GGUF,
    VISUAL_GRID,
    load_language_model,
    torch_dtype,
)
from vlmclf.organism.vlm import OrganismVLM, Projector

Kind = Literal["vlm", "clip"]
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHT_FILES = {"vlm": "projector.safetensors", "clip": "heads.safetensors"}
CONFIG_FILE = "config.json"
RECORD_FILE = "training_record.json"
ORGANISMS: dict[str, tuple[Kind, str]] = {
    "vlm": ("vlm", "vlm"),
    "clip": ("clip", "clip"),
    "vlm-finetuned": ("vlm", "vlm_finetuned"),
    "vlm-uniform": ("vlm", "vlm_uniform"),
    "vlm-reversed": ("vlm", "vlm_reversed"),
}
"""``organism:<name>`` -> (the kind of model, its folder under ``weights/``)."""


def default_weights_dir(name: str) -> Path:
    """The shipped weights folder of ``organism:<name>``."""
    if name not in ORGANISMS:
        raise ValueError(f"unknown organism {name!r}; shipped: {', '.join(ORGANISMS)}")
    return WEIGHTS_DIR / ORGANISMS[name][1]


def organism_kind(name: str) -> Kind:
    """'vlm' or 'clip' for a shipped organism's name (``vlm-uniform`` is a VLM)."""
    if name not in ORGANISMS:
        raise ValueError(f"unknown organism {name!r}; shipped: {', '.join(ORGANISMS)}")
    return ORGANISMS[name][0]


def vlm_config(projector: Projector) -> dict[str, Any]:
    return {
        "kind": "vlm",
        "image_encoder": IMAGE_ENCODER,
        "resolution": IMAGE_RESOLUTION,
        "visual_tokens": {
            "count": NUM_VISUAL_TOKENS,
            "pooling": f"global+{VISUAL_GRID}x{VISUAL_GRID}",
        },
        "projector": {
            "type": "mlp2x_gelu",
            "in_dim": projector.in_dim,
            "hidden_dim": projector.hidden_dim,
            "out_dim": projector.out_dim,
        },
        "language_model": SMOLLM2_GGUF,
    }


def clip_config(heads: ContrastiveHeads) -> dict[str, Any]:
    return {
        "kind": "clip",
        "image_encoder": IMAGE_ENCODER,
        "resolution": IMAGE_RESOLUTION,
        "text_encoder": "all-MiniLM-L6-v2",
        "image_dim": heads.image_head.in_features,
        "text_dim": heads.text_head.in_features,
        "embed_dim": heads.image_head.out_features,
    }


def save_weights(
    out_dir: Path, kind: Kind, module: torch.nn.Module, config: dict[str, Any]
) -> None:
    """Write the trained module (float32 safetensors) and its config into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().float().contiguous().cpu() for name, t in module.state_dict().items()}
    weights = out_dir / WEIGHT_FILES[kind]
    save_file(state, str(weights), metadata={"kind": kind})
    weights.chmod(0o644)  # safetensors writes 0600; the file ships as package data
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def read_config(folder: Path, kind: Kind) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no organism config; train with `vlmclf organism train`")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from err
    if config.get("kind") != kind:
        raise ValueError(f"{path}: holds organism kind {config.get('kind')!r}, expected {kind!r}")
    if config.get("resolution") != IMAGE_RESOLUTION:
        raise ValueError(
            f"{path}: trained at {config.get('resolution')} px, this code encodes at "
            f"{IMAGE_RESOLUTION} px; retrain"
        )
    return config


def load_state(folder: Path, kind: Kind, module: torch.nn.Module) -> torch.nn.Module:
    path = folder / WEIGHT_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: trained {kind} weights missing")
    try:
        module.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: does not match config.json ({err})") from err
    return module


def load_vlm(
    folder: Path, *, dtype: str = "float32", device: str = "cpu", name: str = "organism:vlm"
) -> OrganismVLM:
    config = read_config(folder, "vlm")
    dims = config["projector"]
    projector = Projector(dims["in_dim"], dims["hidden_dim"], dims["out_dim"])
    load_state(folder, "vlm", projector)
    lm, tokenizer = load_language_model(dtype, device)
    visual_tokens = config["visual_tokens"]["count"]
    return OrganismVLM(lm, tokenizer, projector, name=name, num_visual_tokens=visual_tokens)


def load_clip(folder: Path) -> OrganismCLIP:
    """The CLIP runs on the CPU whatever the device: its towers are small and frozen."""
    config = read_config(folder, "clip")
    heads = ContrastiveHeads(config["image_dim"], config["text_dim"], config["embed_dim"])
    load_state(folder, "clip", heads)
    return OrganismCLIP(heads)


def load_organism(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    weights_dir: str | None = None,
) -> OrganismVLM | OrganismCLIP:
    """A shipped organism (``organism:vlm``, ``organism:clip``, ``organism:vlm-finetuned``,
    ``organism:vlm-uniform``, ``organism:vlm-reversed``) with its shipped weights, or the ones
    in ``weights_dir``.

    The VLM's language model goes to ``device`` in ``dtype`` (image encoding stays on the CPU);
    the CLIP always runs on the CPU in float32. ``seed`` is accepted for the registry's uniform
    signature; loading is deterministic.
    """
    del seed
    name = spec.removeprefix("organism:")
    if name not in ORGANISMS:
        shipped = ", ".join(f"'organism:{n}'" for n in ORGANISMS)
        raise ValueError(f"unknown organism {spec!r}; use one of {shipped}")
    torch_dtype(dtype)  # validate early
    folder = Path(weights_dir) if weights_dir else default_weights_dir(name)
    if organism_kind(name) == "vlm":
        return load_vlm(folder, dtype=dtype, device=device, name=f"organism:{name}")
    return load_clip(folder)
