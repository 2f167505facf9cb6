"""Saving and loading the organism's trained parts, and ``load_organism`` for the registry.

A weights folder holds ``config.json`` (what was built), one small safetensors file (the VLM's
projector or the CLIP's heads) and ``training_record.json`` (how it was trained, with the one
command that reproduces it). Shipped organisms (``ORGANISMS``): ``organism:vlm`` and
``organism:clip`` (what ``vlmclf organism train`` wrote), ``organism:vlm-finetuned`` (the VLM's
projector fine-tuned on Fashion-MNIST labels by ``vlmclf finetune``), and the two frequency
interventions: ``organism:vlm-uniform`` (a VLM whose projector saw every class in equally many
captions) and ``organism:vlm-reversed`` (the Zipf law with the ``vlm`` ranking reversed).
``GRID`` adds the encoder-by-LLM grid: ``organism:grid-{lite0|block2}-{smollm2|smollm2w3}``
(strong or weak image encoder x SmolLM2 as shipped or with 3-bit weights), each trained with one
small recipe, and ``organism:grid-lite0-smollm2-lora``, whose LLM learnt (LoRA) during that
pretraining. A VLM folder may add ``lm_adapters.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from vlmclf.organism.adapters import merged_copy
from vlmclf.organism.clip import ContrastiveHeads, OrganismCLIP
from vlmclf.organism.components import (
    IMAGE_ENCODER,
    IMAGE_RESOLUTION,
    LANGUAGE_MODEL,
    LANGUAGE_MODELS,
    NUM_VISUAL_TOKENS,
    SMOLLM2_GGUF,
    VISUAL_GRID,
    WEAK_IMAGE_ENCODER,
    WEAK_LANGUAGE_MODEL,
    image_feature_dim,
    load_language_model,
    torch_dtype,
)
from vlmclf.organism.vlm import OrganismVLM, Projector

Kind = Literal["vlm", "clip"]
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHT_FILES = {"vlm": "projector.safetensors", "clip": "heads.safetensors"}
ADAPTER_FILE = "lm_adapters.safetensors"
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

ENCODER_SHORT = {IMAGE_ENCODER: "lite0", WEAK_IMAGE_ENCODER: "block2"}
LM_SHORT = {LANGUAGE_MODEL: "smollm2", WEAK_LANGUAGE_MODEL: "smollm2w3"}
GRID: dict[str, dict[str, str]] = {
    f"grid-{ENCODER_SHORT[e]}-{LM_SHORT[m]}": {"image_encoder": e, "language_model": m,
                                                 "llm": "frozen"}
    for e in ENCODER_SHORT for m in LM_SHORT
} | {"grid-lite0-smollm2-lora": {"image_encoder": IMAGE_ENCODER, "language_model": LANGUAGE_MODEL,
                                 "llm": "lora"}}  # fmt: skip
"""The grid's organisms -> their components, and whether the LLM trained (LoRA) or stayed frozen
during the projector's pretraining; each lives in ``weights/grid/<name>``, except the strong
frozen pair, which is ``organism:vlm-uniform`` (the grid's recipe is that organism's)."""
GRID_FOLDERS = {name: f"grid/{name}" for name in GRID} | {"grid-lite0-smollm2": "vlm_uniform"}
ORGANISMS |= {name: ("vlm", folder) for name, folder in GRID_FOLDERS.items()}


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


def vlm_config(
    projector: Projector,
    *,
    image_encoder: str = IMAGE_ENCODER,
    language_model: str = LANGUAGE_MODEL,
    adapters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a VLM folder holds; the grid's keys appear only where they differ from the
    original organism's, so its configs read as before. ``language_model`` names what the LLM
    is (the GGUF file, plus its rounding or adapters), which is what ``vlmclf attribute`` reads
    as the model's LLM component."""
    grid: dict[str, Any] = {}
    lm_name = SMOLLM2_GGUF
    if language_model != LANGUAGE_MODEL:
        grid["language_model_variant"] = language_model
        lm_name += f" [{language_model}]"
    if adapters:
        grid["lm_adapters"] = adapters
        lm_name += f" + LoRA r{adapters['rank']}"
    return {
        "kind": "vlm",
        "image_encoder": image_encoder,
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
        "language_model": lm_name,
        **grid,
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
    out_dir: Path,
    kind: Kind,
    module: torch.nn.Module,
    config: dict[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
    adapters: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the trained module (safetensors in ``dtype``), any LM adapters and the config into
    ``out_dir``. The grid stores float16 to keep the package small; loading casts back."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_tensors(out_dir / WEIGHT_FILES[kind], module.state_dict(), kind, dtype)
    if adapters is not None:
        _save_tensors(out_dir / ADAPTER_FILE, adapters, "lm_adapters", dtype)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def _save_tensors(
    path: Path, state: dict[str, torch.Tensor], kind: str, dtype: torch.dtype
) -> None:
    state = {name: t.detach().to(dtype).contiguous().cpu() for name, t in state.items()}
    save_file(state, str(path), metadata={"kind": kind})
    path.chmod(0o644)  # safetensors writes 0600; the file ships as package data


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
    encoder, variant = vlm_components(folder, config)
    dims = config["projector"]
    projector = Projector(dims["in_dim"], dims["hidden_dim"], dims["out_dim"])
    load_state(folder, "vlm", projector)
    if "lm_adapters" in config:
        base, tokenizer = load_language_model("float32", "cpu", variant)
        lm = merged_copy(base, read_adapters(folder), config["lm_adapters"])
        lm.to(device=device, dtype=torch_dtype(dtype))
    else:
        lm, tokenizer = load_language_model(dtype, device, variant)
    visual_tokens = config["visual_tokens"]["count"]
    return OrganismVLM(lm, tokenizer, projector, name=name, num_visual_tokens=visual_tokens,
                       image_encoder=encoder)  # fmt: skip


def vlm_components(folder: Path, config: dict[str, Any]) -> tuple[str, str]:
    """(image encoder, language model variant) of a VLM config, checked against the projector."""
    path = folder / CONFIG_FILE
    encoder = config.get("image_encoder", IMAGE_ENCODER)
    variant = config.get("language_model_variant", LANGUAGE_MODEL)
    try:
        dim = image_feature_dim(encoder)
    except ValueError as err:
        raise ValueError(f"{path}: image_encoder: {err}") from err
    if variant not in LANGUAGE_MODELS:
        raise ValueError(f"{path}: language_model_variant: unknown {variant!r}; "
                         f"use one of {list(LANGUAGE_MODELS)}")  # fmt: skip
    if config["projector"]["in_dim"] != dim:
        raise ValueError(f"{path}: projector.in_dim is {config['projector']['in_dim']} but "
                         f"{encoder} gives {dim} channels")  # fmt: skip
    return encoder, variant


def read_adapters(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / ADAPTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config.json names lm_adapters but the file is missing")
    return load_file(str(path))


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
