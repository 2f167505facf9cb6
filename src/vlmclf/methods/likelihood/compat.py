"""Every transformers-version and model-family specific detail the scorer relies on, in one place.

Tested on transformers 5.23 (CPU) and written for 5.17 (GPU machine). If a future version moves
something, this is the file to change: the scorer itself only calls these functions.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
from torch import nn

# Families whose top-level forward requires pixel values: text-only passes go to the inner LM.
_INNER_LM_FAMILIES = {"blip-2", "instructblip", "instructblipvideo"}
# Families whose text positions are 3D multimodal rotary positions offset by a per-image delta.
_MROPE_FAMILIES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"}
# Families whose first token is at position 1, not 0.
_ONE_BASED_POSITION_FAMILIES = {"paligemma"}
# Prefix LMs: the prompt (token type 0) attends both ways, the answer (token type 1) causally.
_PREFIX_LM_FAMILIES = {"paligemma"}
# Per-token inputs beside input_ids whose value for a text token appended after the prompt is
# the prompt's last token's value (Mllama: which image tiles each token's cross-attention reads).
LAST_TOKEN_REPEATED_INPUTS = ("cross_attention_mask",)
# Attention implementations that take an arbitrary additive 4D mask.
_CUSTOM_MASK_ATTENTION = {"eager", "sdpa"}


def model_type(model: nn.Module) -> str:
    return str(getattr(model.config, "model_type", type(model).__name__))


def text_decoder(model: nn.Module) -> nn.Module:
    """The module that scores text after a cached prefix: a causal LM with its head.

    LLaVA, LLaVA-NeXT and Qwen2-VL accept ``input_ids`` without pixels at the top level (and keep
    their own position logic there); BLIP-2 and InstructBLIP require pixels, so their inner LM
    (OPT, Llama, ...) is called directly.
    """
    if model_type(model) in _INNER_LM_FAMILIES:
        return model.language_model
    return model


def accepts(module: nn.Module, name: str) -> bool:
    """Whether ``module.forward`` takes a keyword ``name`` (explicitly, not through **kwargs)."""
    return name in _forward_parameters(type(module))


@lru_cache(maxsize=64)
def _forward_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def uses_mrope(model: nn.Module) -> bool:
    return model_type(model) in _MROPE_FAMILIES


def mrope_delta(model: nn.Module, batch: int, device: torch.device) -> torch.Tensor:
    """Qwen2-VL: the offset from sequence index to text position after the last prefill, (B,).

    The model stores it (``rope_deltas``, (B, 1)) when its forward computes 3D positions.
    """
    inner = getattr(model, "model", model)
    deltas = getattr(inner, "rope_deltas", None)
    if deltas is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    deltas = deltas.reshape(-1).to(device=device, dtype=torch.long)
    if deltas.numel() == 1:
        return deltas.expand(batch).clone()
    return deltas


def text_position_ids(model: nn.Module, positions: torch.Tensor) -> torch.Tensor:
    """Positions (B, T) in the layout the decoder expects: 3 x (B, T) for multimodal rotary."""
    if uses_mrope(model):
        return positions.unsqueeze(0).expand(3, -1, -1)
    return positions


def last_token_inputs(inputs: dict[str, object]) -> dict[str, torch.Tensor]:
    """The prompt's last-token slice (B, 1, ...) of each ``LAST_TOKEN_REPEATED_INPUTS`` entry,
    to be repeated for every token scored after it."""
    ids = inputs["input_ids"]
    return {
        key: value[:, -1:]
        for key in LAST_TOKEN_REPEATED_INPUTS
        if isinstance(value := inputs.get(key), torch.Tensor) and value.shape[:2] == ids.shape
    }


def repeat_last_token_inputs(
    saved: dict[str, torch.Tensor], rows: int, length: int
) -> dict[str, torch.Tensor]:
    """``last_token_inputs`` for ``rows`` rows (each image's row repeated alike, as
    ``replicate_cache`` repeats its cache) of ``length`` new tokens."""
    out = {}
    for key, value in saved.items():
        value = value.repeat_interleave(rows // value.shape[0], dim=0)
        out[key] = value.expand(-1, length, *value.shape[2:])
    return out


def inputs_after_cache(
    saved: dict[str, torch.Tensor], rows: int, cached: int, length: int
) -> dict[str, torch.Tensor]:
    """``last_token_inputs`` for ``length`` tokens fed after ``cached`` cached ones, spanning
    every position: transformers 5.17 picks the new tokens' rows of Mllama's mask by absolute
    position (cached + i), 5.23 slices a mask longer than the new tokens the same way."""
    return repeat_last_token_inputs(saved, rows, cached + length)


def takes_custom_4d_mask(decoder: nn.Module) -> bool:
    """Whether a tree mask can be handed to this decoder as-is (transformers' masking_utils
    returns a 4D tensor mask untouched for eager and SDPA attention; FlashAttention cannot)."""
    config = getattr(decoder.config, "text_config", None) or decoder.config
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    return implementation in _CUSTOM_MASK_ATTENTION


def past_key_values_of(output: object) -> object:
    """The cache from a forward output (BLIP-2 nests the LM's outputs one level down)."""
    cache = getattr(output, "past_key_values", None)
    if cache is None:
        inner = getattr(output, "language_model_outputs", None)
        cache = getattr(inner, "past_key_values", None)
    if cache is None:
        raise RuntimeError(
            f"{type(output).__name__} returned no past_key_values; pass use_cache=True"
        )
    return cache


def cache_layers(cache: object) -> list[object]:
    """Cache layers with ``keys``/``values`` tensors (B, heads, length, head_dim)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise RuntimeError(
            f"unsupported cache type {type(cache).__name__}: expected a DynamicCache"
        )
    return list(layers)


def cache_length(cache: object) -> int:
    return int(cache.get_seq_length())


def replicate_cache(cache: object, repeats: int) -> object:
    """A new cache whose batch rows are each original row repeated ``repeats`` times."""
    import copy

    clone = copy.copy(cache)
    clone.layers = [copy.copy(layer) for layer in cache_layers(cache)]
    for layer in clone.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys.repeat_interleave(repeats, dim=0)
            layer.values = layer.values.repeat_interleave(repeats, dim=0)
    return clone


def logits_kwargs(decoder: nn.Module, keep: torch.Tensor | int | None) -> dict[str, object]:
    """Ask for logits at ``keep`` only, where the decoder supports it (saves T x V floats)."""
    if keep is not None and accepts(decoder, "logits_to_keep"):
        return {"logits_to_keep": keep}
    return {}


def first_position(model: nn.Module) -> int:
    """The position of a prompt's first token (PaliGemma numbers from 1)."""
    return 1 if model_type(model) in _ONE_BASED_POSITION_FAMILIES else 0


def answer_token_type(model: nn.Module) -> int:
    """The ``token_type_ids`` value of answer tokens: 1 in prefix LMs (PaliGemma), where 0
    would put them in the bidirectional prefix; 0 (plain text) elsewhere."""
    return 1 if model_type(model) in _PREFIX_LM_FAMILIES else 0


def sliding_window(decoder: nn.Module) -> int | None:
    """The smallest attention window of the decoder's layers, None when all attend globally
    (``layer_types`` says which layers slide where the config has it)."""
    config = getattr(decoder.config, "text_config", None) or decoder.config
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window:
        return None
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


def snapshot_cache(cache: object) -> list[tuple[object, object, dict[str, object]]]:
    """The cache's tensors and counters as they are (references, no copies): a forward that
    extends the cache replaces them, so ``restore_cache`` can put these back. Unlike slicing,
    this also undoes a sliding-window layer that dropped its oldest entries."""
    return [
        (getattr(layer, "keys", None), getattr(layer, "values", None), _counters(layer))
        for layer in cache_layers(cache)
    ]


def _counters(layer: object) -> dict[str, object]:
    return {name: getattr(layer, name) for name in ("cumulative_length",) if hasattr(layer, name)}


def restore_cache(cache: object, saved: list[tuple[object, object, dict[str, object]]]) -> None:
    """Put back what ``snapshot_cache`` saw."""
    for layer, (keys, values, counters) in zip(cache_layers(cache), saved, strict=True):
        layer.keys, layer.values = keys, values
        for name, value in counters.items():
            setattr(layer, name, value)
