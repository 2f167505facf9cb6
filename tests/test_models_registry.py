"""load_model's prefixes and errors, and the family table's prompt formats."""

from __future__ import annotations

import sys

import pytest
import transformers as tf

from vlmclf.models import known_prefixes, load_model, register_model_loader, registry
from vlmclf.models.families import (
    GENERIC_VLM,
    adapter_by_name,
    adapter_for_config,
    adapter_for_model_type,
)
from vlmclf.models.random_models import random_spec


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))


def test_unknown_prefix_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        load_model("nosuch:model")
    message = str(error.value)
    assert "'nosuch'" in message
    for prefix in ("hf", "random", "open_clip"):
        assert prefix in message
    assert {"hf", "random", "open_clip"} <= set(known_prefixes())


@pytest.mark.parametrize("spec", ["llava", "hf:", ":model"])
def test_spec_without_prefix_and_name_is_rejected(spec):
    with pytest.raises(ValueError, match="prefix:name"):
        load_model(spec)


def test_registered_loader_receives_name_and_options(isolated_registry):
    calls = []

    def loader(name, **options):
        calls.append((name, options))
        return name.upper()

    register_model_loader("echo", loader)
    assert load_model("echo:a:b", device="cuda:1", dtype="bfloat16", seed=7) == "A:B"
    assert calls == [
        (
            "a:b",
            {
                "device": "cuda:1",
                "dtype": "bfloat16",
                "device_map": None,
                "trust_remote_code": False,
                "seed": 7,
            },
        )
    ]
    assert "echo" in known_prefixes()
    with pytest.raises(ValueError, match="contain no ':'"):
        register_model_loader("bad:prefix", loader)


def test_unknown_random_family_lists_the_known_ones():
    with pytest.raises(ValueError, match="qwen2_vl"):
        load_model("random:gpt2")


@pytest.mark.parametrize(
    ("options", "match"),
    [({"dtype": "float64"}, "dtype must be one of"), ({"device": "gpu"}, "device must be")],
)
def test_bad_dtype_or_device_is_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        load_model("random:clip", **options)


def test_missing_local_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "no-model-here"
    with pytest.raises(ValueError, match="cannot read a model config"):
        load_model(f"hf:{missing}")


def test_open_clip_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(ImportError, match=r"pip install vlmclf\[open_clip\]"):
        load_model("open_clip:ViT-B-32:openai")
    with pytest.raises(ValueError, match="open_clip:<arch>:<pretrained-or-path>"):
        load_model("open_clip:ViT-B-32")


@pytest.mark.parametrize(
    ("model_type", "family"),
    [
        ("clip", "clip"),
        ("siglip", "siglip"),
        ("llava", "llava"),
        ("llava_next", "llava_next"),
        ("blip-2", "blip2"),
        ("instructblip", "instructblip"),
        ("qwen2_vl", "qwen2_vl"),
        ("qwen2_5_vl", "qwen2_5_vl"),
        ("idefics3", "idefics3"),
        ("smolvlm", "smolvlm"),
        ("gemma3", "gemma3"),
        ("paligemma", "paligemma"),
        ("qwen3_vl", "qwen3_vl"),
        ("internvl", "internvl"),
        ("llava_onevision", "llava_onevision"),
        ("mllama", "mllama"),
        ("mistral3", "mistral3"),
        ("aya_vision", "generic"),
    ],
)
def test_family_lookup_by_model_type(model_type, family):
    assert adapter_for_model_type(model_type).name == family


def test_family_detection_from_real_config_classes():
    assert adapter_for_config(tf.Qwen2_5_VLConfig()).name == "qwen2_5_vl"
    assert adapter_for_config(tf.SiglipConfig()).name == "siglip"
    assert adapter_for_config(tf.PaliGemmaConfig()).name == "paligemma"
    assert adapter_for_config(tf.MllamaConfig()).name == "mllama"
    assert adapter_for_config(tf.AyaVisionConfig()) is GENERIC_VLM  # no adapter row: the fallback
    with pytest.raises(ValueError, match="unknown model family"):
        adapter_by_name("gpt2")


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("llava", "USER: <image>\nWhat is it? ASSISTANT:"),
        ("blip2", "Question: What is it? Answer:"),
        ("instructblip", "What is it?"),
        ("llava_next", "[INST] <image>\nWhat is it? [/INST]"),
    ],
)
def test_prompt_formats(family, expected):
    spec = random_spec(family)
    assert adapter_by_name(family).prompt("What is it?", spec.processor, spec.config) == expected


def test_qwen_prompt_uses_the_chat_template_with_an_image_item():
    spec = random_spec("qwen2_vl")
    prompt = adapter_by_name("qwen2_vl").prompt("What is it?", spec.processor, spec.config)
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    generic = GENERIC_VLM.prompt("What is it?", spec.processor, spec.config)
    assert generic == prompt


def test_llava_next_without_chat_template_falls_back_by_text_model():
    spec = random_spec("llava_next")
    spec.processor.chat_template = None
    spec.processor.tokenizer.chat_template = None
    adapter = adapter_by_name("llava_next")
    assert adapter.prompt("Q?", spec.processor, spec.config) == "[INST] <image>\nQ? [/INST]"
    vicuna = tf.LlavaNextConfig(text_config=tf.LlamaConfig(vocab_size=64))
    prompt = adapter.prompt("Q?", spec.processor, vicuna)
    assert prompt.startswith("A chat between") and prompt.endswith("USER: <image>\nQ? ASSISTANT:")
    with pytest.raises(ValueError, match="no chat template"):
        GENERIC_VLM.prompt("Q?", spec.processor, spec.config)
    with pytest.raises(TypeError, match="encoder"):
        adapter_by_name("clip").prompt("Q?", spec.processor, spec.config)
