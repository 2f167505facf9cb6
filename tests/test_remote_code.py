"""Checkpoints that ship their own model code (Phi-3-Vision): without ``--trust-remote-code``
a one-line error that names the flag; with it, a local checkpoint loads through the class its
config's ``auto_map`` names and is prompted in Phi-3-Vision's format.

The checkpoint's own code here is written by the test (a tiny LLaVA under Phi-3-Vision's names,
``model_type`` and image placeholder), so what is proven is vlmclf's side: the flag reaches
config, processor and model loading, and the phi3_v row is used. Microsoft's own Phi-3-Vision
code is not run here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import transformers as tf
from PIL import Image

from vlmclf.models import load_model
from vlmclf.models.random_models import build_random

CONFIG_CODE = """
from transformers import LlavaConfig


class Phi3VConfig(LlavaConfig):
    model_type = "phi3_v"
"""
MODEL_CODE = """
from transformers import LlavaForConditionalGeneration

from .configuration_phi3_v import Phi3VConfig


class Phi3VForCausalLM(LlavaForConditionalGeneration):
    config_class = Phi3VConfig
"""
PHI3_TOKENS = ["<|image_1|>", "<|user|>", "<|end|>", "<|assistant|>"]


def write_remote_code_checkpoint(folder: Path) -> Path:
    """A saved tiny LLaVA whose config names its own classes (``auto_map``), as Phi-3-Vision's
    does, with Phi-3-Vision's chat tokens and ``<|image_1|>`` as the image placeholder."""
    model, processor, _ = build_random("llava", seed=0)
    tokenizer = processor.tokenizer
    tokenizer.add_tokens(PHI3_TOKENS, special_tokens=True)
    tokenizer.image_token = "<|image_1|>"  # the LLaVA processor reads its placeholder here
    model.resize_token_embeddings(len(tokenizer))
    phi3_processor = tf.LlavaProcessor(
        image_processor=processor.image_processor, tokenizer=tokenizer, patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        image_token="<|image_1|>",
    )  # fmt: skip
    model.save_pretrained(folder)
    phi3_processor.save_pretrained(folder)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config.update(
        model_type="phi3_v",
        architectures=["Phi3VForCausalLM"],
        image_token_index=tokenizer.convert_tokens_to_ids("<|image_1|>"),
        auto_map={
            "AutoConfig": "configuration_phi3_v.Phi3VConfig",
            "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
        },
    )
    config_file.write_text(json.dumps(config))
    (folder / "configuration_phi3_v.py").write_text(CONFIG_CODE)
    (folder / "modeling_phi3_v.py").write_text(MODEL_CODE)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_remote_code_checkpoint(tmp_path_factory.mktemp("phi3v") / "ckpt")


def test_without_the_flag_the_error_is_one_line_naming_it(checkpoint):
    with pytest.raises(ValueError, match="ships its own model code .*--trust-remote-code") as err:
        load_model(f"hf:{checkpoint}")
    assert "\n" not in str(err.value) and str(checkpoint) in str(err.value)


def test_with_the_flag_the_checkpoint_s_own_classes_run_in_phi3_v_format(checkpoint):
    model = load_model(f"hf:{checkpoint}", trust_remote_code=True)
    assert model.adapter.name == "phi3_v"
    assert type(model.model).__name__ == "Phi3VForCausalLM"  # from the checkpoint's own file
    assert type(model.model).__module__.startswith("transformers_modules")
    question = "What type of object is in this photo?"
    assert model.format_prompt(question) == (
        f"<|user|>\n<|image_1|>\n{question}<|end|>\n<|assistant|>\n"
    )
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)),
              Image.new("RGB", (30, 30), (200, 10, 10))]  # fmt: skip
    questions = [question, "Identify the object."]
    batch = model.build_inputs(images, questions)
    image_id = model.model.config.image_token_index
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [16, 16]  # placeholder expanded
    answers = model.generate(images, questions, max_new_tokens=3)
    assert len(answers) == 2 and answers == model.generate(images, questions, max_new_tokens=3)
    features = model.hidden_features(images, questions)
    assert features.last_token.shape == (2, model.model.config.text_config.hidden_size)


def test_an_unknown_remote_code_model_loads_through_the_auto_class_its_config_names():
    """A family without a row (the generic adapter) whose ``auto_map`` names only
    ``AutoModelForCausalLM`` is not sent to ``AutoModelForImageTextToText``."""
    from vlmclf.models.families import GENERIC_VLM, adapter_by_name
    from vlmclf.models.hf_loading import model_class_for

    config = tf.LlavaConfig()
    config.auto_map = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    assert model_class_for(config, GENERIC_VLM) is tf.AutoModelForCausalLM
    assert model_class_for(tf.LlavaConfig(), GENERIC_VLM) is tf.AutoModelForImageTextToText
    llava = adapter_by_name("llava")  # a family row with its own class keeps it
    assert model_class_for(config, llava) is tf.LlavaForConditionalGeneration
