"""Tiny random Llama 3.2 Vision (``mllama``), Mistral 3 and Pixtral models (``random:<family>``),
built like those in ``random_recent.py``.

Llama 3.2 Vision is the one family whose image never enters the token sequence: one
``<|image|>`` token marks where the text starts to see it, and cross-attention layers read the
image's tiles (a padded, aspect-ratio-dependent number of them, masked per token by
``cross_attention_mask``). Mistral 3 and Pixtral-12B put Pixtral's vision tokens (2-D rotary
over the patch grid, one ``[IMG_BREAK]`` per row) into a Mistral decoder, Mistral 3 after a 2x2
patch merger. Import through ``random_models`` (which registers these builders).
"""

from __future__ import annotations

from typing import Any

import transformers as tf
from torch import nn

from vlmclf.models.compat import processor_class
from vlmclf.models.random_parts import (
    CLIP_MEAN,
    CLIP_STD,
    CONTEXT,
    IMAGE_SIZE,
    TEXT_FFN,
    TEXT_HEADS,
    TEXT_HIDDEN,
    VISION,
    RandomSpec,
    llama_text,
    token_ids,
)
from vlmclf.models.random_tokenizer import build_tokenizer

MLLAMA_TILES = 2  # tiles per image: (1, 1), (1, 2) and (2, 1) layouts
MLLAMA_GATE = 0.75  # tanh(0.75) ~ 0.64: how much the cross-attention layers let through
PIXTRAL_PATCH, PIXTRAL_LONGEST_EDGE = 8, 64


def _open_gates(model: nn.Module) -> None:
    """Mllama initialises every tanh gate at zero (cross-attention, tile positions), which
    would make the image invisible to the text; trained checkpoints have them open."""
    for name, parameter in model.named_parameters():
        if name.endswith("gate") and parameter.numel() == 1:
            parameter.fill_(MLLAMA_GATE)


def _mllama() -> RandomSpec:
    """Three decoder layers (self, cross, self): layer 1 attends to 17 tokens per tile
    (16 patches + a class token) of up to two tiles; the vision tower feeds its last and its
    intermediate layers' states (3 x 32 wide) to the projector."""
    tokenizer = build_tokenizer("mllama")
    patch = 8
    ratios = [[1, 1], [1, 2], [2, 1]]
    vision = tf.MllamaVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
        attention_heads=4, image_size=IMAGE_SIZE, patch_size=patch, max_num_tiles=MLLAMA_TILES,
        intermediate_layers_indices=[0, 1], vision_output_dim=96,
        supported_aspect_ratios=ratios,
    )  # fmt: skip
    text = tf.MllamaTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=TEXT_FFN,
        num_hidden_layers=3, cross_attention_layers=[1], num_attention_heads=TEXT_HEADS,
        num_key_value_heads=2, max_position_embeddings=CONTEXT, **token_ids(tokenizer),
    )  # fmt: skip
    config = tf.MllamaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id
    )
    image_processor = tf.MllamaImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, max_image_tiles=MLLAMA_TILES,
        image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )  # fmt: skip
    processor = tf.MllamaProcessor(
        image_processor, tokenizer, chat_template=tokenizer.chat_template
    )
    return RandomSpec(config, processor, finish=_open_gates)


def _pixtral_vision() -> tf.PixtralVisionConfig:
    return tf.PixtralVisionConfig(
        **VISION, num_attention_heads=4, head_dim=8, image_size=PIXTRAL_LONGEST_EDGE,
        patch_size=PIXTRAL_PATCH,
    )  # fmt: skip


def _pixtral_processor(tokenizer: Any, merge: int) -> Any:
    image_processor = tf.PixtralImageProcessorPil(
        size={"longest_edge": PIXTRAL_LONGEST_EDGE},
        patch_size={"height": PIXTRAL_PATCH, "width": PIXTRAL_PATCH},
        image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )  # fmt: skip
    return processor_class("PixtralProcessor")(
        image_processor, tokenizer, patch_size=PIXTRAL_PATCH, spatial_merge_size=merge,
        chat_template=tokenizer.chat_template,
    )  # fmt: skip


def _mistral3() -> RandomSpec:
    """Pixtral patches of 8 pixels, merged 2x2 before the projector: an image up to 64 pixels
    on its longest edge becomes up to 4 x 4 tokens, each row closed by [IMG_BREAK]."""
    tokenizer = build_tokenizer("pixtral")
    merge = 2
    config = tf.Mistral3Config(
        vision_config=_pixtral_vision(),
        text_config=llama_text(tokenizer, tf.MistralConfig, sliding_window=None),
        image_token_index=tokenizer.image_token_id,
        spatial_merge_size=merge,
        vision_feature_layer=-1,
        tie_word_embeddings=False,  # as Mistral Small 3.1; tied, a random model echoes its input
    )
    return RandomSpec(config, _pixtral_processor(tokenizer, merge))


def _pixtral() -> RandomSpec:
    """Pixtral-12B: LLaVA's two-layer projector on every Pixtral patch (no merging), so an
    image up to 64 pixels on its longest edge becomes up to 8 x 8 tokens plus row breaks."""
    tokenizer = build_tokenizer("pixtral")
    config = tf.LlavaConfig(
        vision_config=_pixtral_vision(),
        text_config=llama_text(tokenizer, tf.MistralConfig, sliding_window=None),
        image_token_index=tokenizer.image_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    return RandomSpec(config, _pixtral_processor(tokenizer, merge=1))


LLAMA_MISTRAL_FAMILIES = {
    "mllama": _mllama,
    "mistral3": _mistral3,
    "pixtral": _pixtral,
}
