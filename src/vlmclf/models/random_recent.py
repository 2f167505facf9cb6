"""Tiny random models of today's open VLM families (``random:<family>``), built like the ones in
``random_models.py`` (real config, model and processor classes, the offline tokenizer).

LLaVA-OneVision, Qwen3-VL, Gemma 3, PaliGemma, InternVL, Idefics3, SmolVLM and Mistral 3
. Each is a couple of layers of the real architecture, so each family's own
image-token expansion, attention pattern (bidirectional image tokens in Gemma 3 and
PaliGemma, sliding windows in Gemma 3, M-RoPE in Qwen3-VL) and positions are what is tested.
Import through ``random_models`` (which registers these builders).
"""

from __future__ import annotations

from typing import Any

import transformers as tf

from vlmclf.models.compat import without_video_processor
from vlmclf.models.random_parts import (
    CLIP_MEAN,
    CLIP_STD,
    CONTEXT,
    IMAGE_SIZE,
    QWEN_MERGE,
    QWEN_PATCH,
    TEXT_FFN,
    TEXT_HEADS,
    TEXT_HIDDEN,
    TEXT_LAYERS,
    VISION,
    RandomSpec,
    llama_text,
    qwen_text,
    token_ids,
)
from vlmclf.models.random_tokenizer import build_tokenizer

GEMMA_SLIDING_WINDOW = 4096  # above every test prompt: the tree path stays exact (see scoring)
SIGLIP_MEAN, SIGLIP_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def _siglip_vision(patch: int, **extra: Any) -> tf.SiglipVisionConfig:
    return tf.SiglipVisionConfig(
        **VISION, num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=patch, **extra
    )


def _llava_onevision() -> RandomSpec:
    tokenizer = build_tokenizer("onevision")
    patch = 16
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    config = tf.LlavaOnevisionConfig(
        vision_config=_siglip_vision(patch),
        text_config=llama_text(tokenizer, tf.Qwen2Config),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = tf.LlavaOnevisionImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=pinpoints,
        image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD,
    )
    processor = without_video_processor(tf.LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(IMAGE_SIZE // patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=tokenizer.chat_template,
    )
    return RandomSpec(config, processor)


def _gemma_text(tokenizer: Any, config_class: type, **extra: Any) -> Any:
    return config_class(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=TEXT_FFN,
        num_hidden_layers=TEXT_LAYERS, num_attention_heads=TEXT_HEADS, num_key_value_heads=2,
        head_dim=TEXT_HIDDEN // TEXT_HEADS, max_position_embeddings=CONTEXT, **token_ids(tokenizer),
        **extra,
    )  # fmt: skip


def _gemma3(sliding_window: int = GEMMA_SLIDING_WINDOW) -> RandomSpec:
    """Layer 0 attends within a sliding window, layer 1 globally; image tokens attend to each
    other both ways. ``sliding_window`` below the prompt length tests the replicate fallback."""
    tokenizer = build_tokenizer("gemma")
    patch, tokens_per_image = 8, 4
    text = _gemma_text(
        tokenizer, tf.Gemma3TextConfig, sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    config = tf.Gemma3Config(
        text_config=text,
        vision_config=_siglip_vision(patch),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    image_processor = tf.Gemma3ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD,
    )  # fmt: skip
    processor = tf.Gemma3Processor(
        image_processor, tokenizer, chat_template=tokenizer.chat_template,
        image_seq_length=tokens_per_image,
    )  # fmt: skip
    return RandomSpec(config, processor)


def _qwen3_vl() -> RandomSpec:
    """Interleaved M-RoPE over (time, height, width), and DeepStack: vision features of block 0
    are added to the first decoder layer's image positions."""
    tokenizer = build_tokenizer("qwen3")
    text = {
        **qwen_text(tokenizer), "head_dim": TEXT_HIDDEN // TEXT_HEADS,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                            "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    }  # fmt: skip
    config = tf.Qwen3VLConfig(
        text_config=text,
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4,
            "out_hidden_size": TEXT_HIDDEN, "patch_size": QWEN_PATCH,
            "spatial_merge_size": QWEN_MERGE, "temporal_patch_size": 2,
            "num_position_embeddings": 64, "deepstack_visual_indexes": [0],
        },
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.vision_start_token_id,
        vision_end_token_id=tokenizer.vision_end_token_id,
    )  # fmt: skip
    factor = QWEN_PATCH * QWEN_MERGE
    image_processor = tf.Qwen2VLImageProcessorPil(
        min_pixels=(2 * factor) ** 2, max_pixels=(4 * factor) ** 2, patch_size=QWEN_PATCH,
        merge_size=QWEN_MERGE, temporal_patch_size=2, image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD,
    )  # fmt: skip
    processor = without_video_processor(tf.Qwen3VLProcessor)(
        image_processor, tokenizer, chat_template=tokenizer.chat_template
    )
    return RandomSpec(config, processor)


def _internvl() -> RandomSpec:
    tokenizer = build_tokenizer("internvl")
    patch, tokens_per_tile = 8, 4  # (32 / 8)^2 patches, pixel-shuffled by 0.5 -> 4 tokens
    config = tf.InternVLConfig(
        vision_config=tf.InternVLVisionConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=[IMAGE_SIZE, IMAGE_SIZE], patch_size=[patch, patch],
        ),
        text_config=llama_text(tokenizer, tf.Qwen2Config),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
    )  # fmt: skip
    image_processor = tf.GotOcr2ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, crop_to_patches=True, min_patches=1,
        max_patches=4, image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )  # fmt: skip
    processor = without_video_processor(tf.InternVLProcessor)(
        image_processor, tokenizer, image_seq_length=tokens_per_tile,
        chat_template=tokenizer.chat_template,
    )  # fmt: skip
    return RandomSpec(config, processor)


def _idefics_parts(config_class: type, processor_class: type) -> RandomSpec:
    """Idefics3 and SmolVLM: images split into 32-pixel tiles plus a global view, each tile
    pixel-shuffled to 4 tokens between row/column markers."""
    tokenizer = build_tokenizer("idefics")
    patch, tokens_per_tile = 8, 4
    config = config_class(
        vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "intermediate_size": 64, "image_size": IMAGE_SIZE, "patch_size": patch},
        text_config=llama_text(tokenizer).to_dict(),
        image_token_id=tokenizer.image_token_id,
        scale_factor=2,
    )  # fmt: skip
    image_class = getattr(
        tf, f"{processor_class.__name__.removesuffix('Processor')}ImageProcessorPil"
    )
    image_processor = image_class(
        size={"longest_edge": 2 * IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE},
        do_image_splitting=True, image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD,
    )  # fmt: skip
    processor = without_video_processor(processor_class)(
        image_processor, tokenizer, image_seq_len=tokens_per_tile,
        chat_template=tokenizer.chat_template,
    )  # fmt: skip
    return RandomSpec(config, processor)


def _idefics3() -> RandomSpec:
    return _idefics_parts(tf.Idefics3Config, tf.Idefics3Processor)


def _smolvlm() -> RandomSpec:
    return _idefics_parts(tf.SmolVLMConfig, tf.SmolVLMProcessor)


def _paligemma() -> RandomSpec:
    """A prefix LM: image and prompt attend to each other both ways, the answer causally;
    positions count from 1."""
    tokenizer = build_tokenizer("paligemma")
    patch = 8
    tokens = (IMAGE_SIZE // patch) ** 2
    image_processor = tf.SiglipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD,
    )  # fmt: skip
    image_processor.image_seq_length = tokens
    # the processor adds PaliGemma's 1024 <locNNNN> and 128 <segNNN> tokens: size the vocab after
    processor = tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = tf.PaliGemmaConfig(
        vision_config=_siglip_vision(patch, projection_dim=TEXT_HIDDEN),
        text_config=_gemma_text(processor.tokenizer, tf.GemmaConfig),
        image_token_index=tokenizer.image_token_id,
        projection_dim=TEXT_HIDDEN,
        hidden_size=TEXT_HIDDEN,
    )
    return RandomSpec(config, processor)


RECENT_FAMILIES = {
    "llava_onevision": _llava_onevision,
    "gemma3": _gemma3,
    "qwen3_vl": _qwen3_vl,
    "internvl": _internvl,
    "idefics3": _idefics3,
    "smolvlm": _smolvlm,
    "paligemma": _paligemma,
}
