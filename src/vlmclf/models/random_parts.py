"""The pieces every tiny random family is built from: sizes, the CLIP-style vision tower and
image processor, the Llama and Qwen text configs. The family builders live in ``random_models``
(the classic families and the registry), ``random_recent`` and ``random_llama_mistral``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers as tf

IMAGE_SIZE = 32
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
TEXT_HIDDEN, TEXT_FFN, TEXT_LAYERS, TEXT_HEADS = 64, 128, 2, 4
CONTEXT = 8192  # rotary models: long enough for a closed-world prompt listing 1000 names
OPT_CONTEXT = 2048  # OPT learns one embedding per position, so keep its table small
NUM_QUERY_TOKENS = 8
CLIP_MEAN, CLIP_STD = [0.4815, 0.4578, 0.4082], [0.2686, 0.2613, 0.2758]


@dataclass(frozen=True)
class RandomSpec:
    """A family's tiny config and matching processor, before weights exist; ``finish`` edits
    freshly initialised weights where the real init would hide a code path (Mllama's zero gates
    switch its cross-attention off)."""

    config: Any
    processor: Any
    finish: Callable[[torch.nn.Module], None] | None = None


def token_ids(tokenizer: Any) -> dict[str, int | None]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def clip_vision(patch_size: int) -> tf.CLIPVisionConfig:
    return tf.CLIPVisionConfig(
        **VISION, num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=patch_size,
        projection_dim=32,
    )  # fmt: skip


def clip_image_processor(**extra: Any) -> Any:
    return tf.CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        **extra,
    )


def llama_text(tokenizer: Any, config_class: type = tf.LlamaConfig, **extra: Any) -> Any:
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=TEXT_FFN,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=TEXT_HEADS,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        **token_ids(tokenizer),
        **extra,
    )


QWEN_PATCH, QWEN_MERGE = 8, 2


def qwen_text(tokenizer: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer), "hidden_size": TEXT_HIDDEN, "intermediate_size": TEXT_FFN,
        "num_hidden_layers": TEXT_LAYERS, "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": 2, "max_position_embeddings": CONTEXT,
        # head_dim 16 -> 8 rotary frequencies split over (time, height, width)
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                            "mrope_section": [2, 3, 3]},
        **token_ids(tokenizer),
    }  # fmt: skip
