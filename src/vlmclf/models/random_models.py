"""Tiny randomly initialised models of the real architectures (``random:<family>``).

Each builder uses the real transformers config, model and processor classes with an offline
tokenizer (``random_tokenizer``) and a real image processor, so every code path that a real
checkpoint takes (prompt formatting, image-token expansion, merging of image features, left
padding, generation) is exercised, in about a second, without any download. Same family and
seed give the same weights. They prove plumbing and numerics, not accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from transformers import GenerationConfig

from vlmclf.models.compat import image_only_processor_class
from vlmclf.models.families import FamilyAdapter, adapter_by_name
from vlmclf.models.random_llama_mistral import LLAMA_MISTRAL_FAMILIES
from vlmclf.models.random_parts import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_SIZE,
    NUM_QUERY_TOKENS,
    OPT_CONTEXT,
    QWEN_MERGE,
    QWEN_PATCH,
    TEXT_FFN,
    TEXT_HEADS,
    TEXT_HIDDEN,
    TEXT_LAYERS,
    VISION,
    RandomSpec,
    clip_image_processor,
    clip_vision,
    llama_text,
    qwen_text,
    token_ids,
)
from vlmclf.models.random_recent import RECENT_FAMILIES
from vlmclf.models.random_tokenizer import build_tokenizer


def _clip() -> RandomSpec:
    tokenizer = build_tokenizer("clip")
    config = tf.CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer), **VISION, "num_attention_heads": 4,
            "max_position_embeddings": 77, "projection_dim": 32, **token_ids(tokenizer),
        },
        vision_config=clip_vision(16).to_dict(),
        projection_dim=32,
    )  # fmt: skip
    return RandomSpec(config, tf.CLIPProcessor(clip_image_processor(), tokenizer))


def _siglip() -> RandomSpec:
    tokenizer = build_tokenizer("siglip")
    config = tf.SiglipConfig(
        text_config={
            "vocab_size": len(tokenizer), **VISION, "num_attention_heads": 4,
            "max_position_embeddings": 64, **token_ids(tokenizer),
        },
        vision_config={**VISION, "num_attention_heads": 4, "image_size": IMAGE_SIZE,
                       "patch_size": 16},
    )  # fmt: skip
    image_processor = tf.SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return RandomSpec(config, tf.SiglipProcessor(image_processor, tokenizer))


def _llava() -> RandomSpec:
    tokenizer = build_tokenizer("llama")
    patch = 8
    config = tf.LlavaConfig(
        vision_config=clip_vision(patch),
        text_config=llama_text(tokenizer),
        image_token_index=tokenizer.image_token_id,
        image_seq_length=(IMAGE_SIZE // patch) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tokenizer.pad_token_id,
    )
    processor = tf.LlavaProcessor(
        image_processor=clip_image_processor(),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return RandomSpec(config, processor)


def _llava_next() -> RandomSpec:
    tokenizer = build_tokenizer("mistral")
    patch = 16
    pinpoints = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    config = tf.LlavaNextConfig(
        vision_config=clip_vision(patch),
        text_config=llama_text(tokenizer, tf.MistralConfig, sliding_window=None),
        image_token_index=tokenizer.image_token_id,
        image_grid_pinpoints=pinpoints,
        image_seq_length=(IMAGE_SIZE // patch) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = tf.LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=pinpoints,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    processor = tf.LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    return RandomSpec(config, processor)


def _blip_vision() -> dict[str, Any]:
    return {**VISION, "num_attention_heads": 4, "image_size": IMAGE_SIZE, "patch_size": 8}


def _qformer(vocab_size: int, pad_token_id: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "encoder_hidden_size": 32,
        "max_position_embeddings": 512, "pad_token_id": pad_token_id,
    }  # fmt: skip


def _blip_image_processor() -> Any:
    return tf.BlipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )


def _blip2() -> RandomSpec:
    tokenizer = build_tokenizer("opt")
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    text = tf.OPTConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, ffn_dim=TEXT_FFN,
        num_hidden_layers=TEXT_LAYERS, num_attention_heads=TEXT_HEADS,
        word_embed_proj_dim=TEXT_HIDDEN, max_position_embeddings=OPT_CONTEXT,
        **token_ids(tokenizer),
    )  # fmt: skip
    config = tf.Blip2Config(
        vision_config=_blip_vision(),
        qformer_config=_qformer(len(tokenizer), tokenizer.pad_token_id),
        text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_id,
        image_text_hidden_size=32,
    )
    processor = tf.Blip2Processor(_blip_image_processor(), tokenizer, NUM_QUERY_TOKENS)
    return RandomSpec(config, processor)


def _instructblip() -> RandomSpec:
    tokenizer = build_tokenizer("vicuna_blip")
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    qformer_tokenizer = build_tokenizer("qformer")
    config = tf.InstructBlipConfig(
        vision_config=_blip_vision(),
        qformer_config=_qformer(len(qformer_tokenizer), qformer_tokenizer.pad_token_id),
        text_config=llama_text(tokenizer).to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_id,
    )
    processor = tf.InstructBlipProcessor(
        _blip_image_processor(), tokenizer, qformer_tokenizer, NUM_QUERY_TOKENS
    )
    return RandomSpec(config, processor)


def _qwen_spec(config_class: type, processor_class: type, vision: dict[str, Any]) -> RandomSpec:
    tokenizer = build_tokenizer("qwen")
    config = config_class(
        text_config=qwen_text(tokenizer),
        vision_config={
            **vision, "patch_size": QWEN_PATCH, "spatial_merge_size": QWEN_MERGE,
            "temporal_patch_size": 2,
        },
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.vision_start_token_id,
        vision_end_token_id=tokenizer.vision_end_token_id,
    )  # fmt: skip
    factor = QWEN_PATCH * QWEN_MERGE  # images become (h/16) x (w/16) tokens, 4 to 16 of them
    image_processor = tf.Qwen2VLImageProcessorPil(
        min_pixels=(2 * factor) ** 2,
        max_pixels=(4 * factor) ** 2,
        patch_size=QWEN_PATCH,
        merge_size=QWEN_MERGE,
        temporal_patch_size=2,
    )
    image_only = image_only_processor_class(processor_class)
    processor = image_only(image_processor, tokenizer, chat_template=tokenizer.chat_template)
    return RandomSpec(config, processor)


def _qwen2_vl() -> RandomSpec:
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": TEXT_HIDDEN, "num_heads": 4,
              "mlp_ratio": 2}  # fmt: skip
    return _qwen_spec(tf.Qwen2VLConfig, tf.Qwen2VLProcessor, vision)


def _qwen2_5_vl() -> RandomSpec:
    # window attention over 2x2 merged patches in block 0, full attention in block 1
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4,
              "out_hidden_size": TEXT_HIDDEN, "window_size": 2 * QWEN_PATCH * QWEN_MERGE,
              "fullatt_block_indexes": [1]}  # fmt: skip
    return _qwen_spec(tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLProcessor, vision)


RANDOM_FAMILIES: dict[str, Callable[[], RandomSpec]] = {
    "clip": _clip,
    "siglip": _siglip,
    "llava": _llava,
    "llava_next": _llava_next,
    "blip2": _blip2,
    "instructblip": _instructblip,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_5_vl,
    **RECENT_FAMILIES,
    **LLAMA_MISTRAL_FAMILIES,
}


def random_spec(family: str) -> RandomSpec:
    try:
        builder = RANDOM_FAMILIES[family]
    except KeyError:
        raise ValueError(
            f"no random model for family {family!r}; known: {sorted(RANDOM_FAMILIES)}"
        ) from None
    return builder()


def build_random(family: str, seed: int = 0) -> tuple[torch.nn.Module, Any, FamilyAdapter]:
    """(model, processor, adapter) for a tiny random ``family`` model, float32 on CPU.

    Weights depend only on ``seed``; the global torch RNG is left as it was.
    """
    spec = random_spec(family)
    adapter = adapter_by_name(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = adapter.model_cls()(spec.config)
        if spec.finish is not None:
            with torch.no_grad():
                spec.finish(model)
    model.eval()
    tokenizer = spec.processor.tokenizer
    if hasattr(model, "generation_config") and adapter.kind == "vlm":
        model.generation_config = GenerationConfig(do_sample=False, **token_ids(tokenizer))
    return model, spec.processor, adapter


def save_random_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random model and its processor with ``save_pretrained``: loadable by ``hf:<dir>``."""
    model, processor, _ = build_random(family, seed)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_random_model(
    family: str, *, device: str = "cpu", dtype: str = "float32", seed: int = 0, **_: Any
) -> Any:
    """The ``random:<family>`` loader: a wrapped tiny model on ``device`` in ``dtype``."""
    from vlmclf.models.hf import wrap_model
    from vlmclf.models.image_classifier import RANDOM_CLASSIFIERS, load_random_classifier

    if family in RANDOM_CLASSIFIERS:
        return load_random_classifier(family, device=device, dtype=dtype, seed=seed)

    model, processor, adapter = build_random(family, seed)
    return wrap_model(model, processor, adapter, f"random:{family}", device=device, dtype=dtype)
