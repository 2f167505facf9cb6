"""Half precision as transformers loads it (issue 25, item 1): for every ``hf:``/``random:``
family, vlmclf's bfloat16 model gives the logits that ``from_pretrained(dir, dtype=bfloat16)``
gives on the same saved checkpoint, bit for bit, and bfloat16 generation on a saved tiny LLaVA
is transformers' own ``generate``, text for text.

The cause these guard against: ``model.to(bfloat16)`` also rounds buffers that transformers keeps
in float32 (the rotary ``inv_freq``), which moves every logit of a rotary model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlmclf.models import load_model
from vlmclf.models.image_classifier import RANDOM_CLASSIFIERS, build_random_classifier
from vlmclf.models.random_models import RANDOM_FAMILIES, build_random

QUESTIONS = ["What type of object is in this photo?", "Identify the object."]
ENCODERS = ("clip", "siglip")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (30, 24, 3), dtype=np.uint8)),
    ]


def _save_family(family: str, folder) -> type:
    """Save the float32 random ``family`` model and its processor; return its model class."""
    if family in RANDOM_CLASSIFIERS:
        model, processor = build_random_classifier(family, seed=0)
    else:
        model, processor, _ = build_random(family, seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return type(model)


def _reference(model_class: type, folder) -> torch.nn.Module:
    return model_class.from_pretrained(folder, dtype=torch.bfloat16).eval()


def _same_state(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Parameters and buffers (persistent or not) equal in value and dtype."""
    mine = dict(ours.named_parameters()) | dict(ours.named_buffers())
    reference = dict(theirs.named_parameters()) | dict(theirs.named_buffers())
    assert mine.keys() == reference.keys()
    for name, tensor in reference.items():
        assert mine[name].dtype == tensor.dtype, name
        assert torch.equal(mine[name], tensor), name


@pytest.mark.parametrize("family", sorted(RANDOM_FAMILIES) + list(RANDOM_CLASSIFIERS))
def test_bf16_logits_equal_from_pretrained_bit_for_bit(family, tmp_path, images):
    folder = tmp_path / family
    model_class = _save_family(family, folder)
    reference = _reference(model_class, folder)
    for spec in (f"hf:{folder}", f"random:{family}"):
        ours = load_model(spec, dtype="bfloat16", seed=0)
        _same_state(ours.model, reference)
        with torch.inference_mode():
            if family in RANDOM_CLASSIFIERS:  # vlmclf's own path: log_probs
                pixels = ours.image_processor(images=images, return_tensors="pt")["pixel_values"]
                logits = reference(pixel_values=pixels.to(torch.bfloat16)).logits
                expected = torch.log_softmax(logits.float(), dim=-1)
                got = ours.log_probs(images)
            elif family in ENCODERS:
                pixels = ours.processor(images=images, return_tensors="pt")["pixel_values"]
                pixels = pixels.to(torch.bfloat16)
                expected = reference.get_image_features(pixel_values=pixels)
                got = ours.model.get_image_features(pixel_values=pixels)
                expected, got = _embeddings(expected), _embeddings(got)
            else:
                batch = ours.build_inputs(images, QUESTIONS)
                kwargs = ours.forward_inputs(batch)
                expected = reference(**kwargs, use_cache=False).logits
                got = ours.model(**kwargs, use_cache=False).logits
        assert got.dtype == expected.dtype
        assert torch.equal(got, expected), f"{spec}: max diff {(got - expected).abs().max()}"


def _embeddings(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.mark.parametrize("family", ["blip2", "instructblip"])
def test_float16_keeps_what_transformers_keeps_in_float32(family, tmp_path):
    """BLIP-2's Q-Former and query tokens stay float32 in float16 (``_keep_in_fp32_modules``),
    which ``model.to(float16)`` would round."""
    folder = tmp_path / family
    model_class = _save_family(family, folder)
    reference = model_class.from_pretrained(folder, dtype=torch.float16).eval()
    ours = load_model(f"random:{family}", dtype="float16", seed=0)
    _same_state(ours.model, reference)
    assert ours.model.query_tokens.dtype == torch.float32


def test_rotary_inv_freq_stays_float32_in_bf16():
    """The buffer ``model.to(bfloat16)`` used to round: as transformers keeps it."""
    model = load_model("random:llava", dtype="bfloat16")
    buffers = {name: b for name, b in model.model.named_buffers() if name.endswith("inv_freq")}
    assert buffers and all(b.dtype == torch.float32 for b in buffers.values())
    assert all(p.dtype == torch.bfloat16 for p in model.model.parameters())


def test_bf16_generation_on_a_saved_llava_equals_transformers_generate(tmp_path):
    """vlmclf's greedy answers = ``from_pretrained(dir, dtype=bf16).generate`` decoded, on the
    same processor inputs, for every image."""
    folder = tmp_path / "llava"
    model_class = _save_family("llava", folder)
    reference = _reference(model_class, folder)
    ours = load_model(f"hf:{folder}", dtype="bfloat16")
    rng = np.random.default_rng(11)
    pictures = [
        Image.fromarray(rng.integers(0, 256, (24 + 4 * i, 32, 3), dtype=np.uint8)) for i in range(8)
    ]
    questions = [QUESTIONS[i % 2] for i in range(len(pictures))]
    max_new = 12
    pairs = zip(pictures, questions, strict=True)
    answers = [ours.generate([p], [q], max_new)[0] for p, q in pairs]

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    expected = []
    for picture, question in zip(pictures, questions, strict=True):
        prompt = ours.format_prompt(question)
        inputs = processor(images=picture, text=prompt, return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
        with torch.inference_mode():
            out = reference.generate(**inputs, do_sample=False, max_new_tokens=max_new)
        new = out[0, inputs["input_ids"].shape[1] :]
        expected.append(processor.tokenizer.decode(new, skip_special_tokens=True).strip())
    assert answers == expected


def test_half_precision_runs_and_feature_files_name_the_loading_rule():
    """A bfloat16 run or feature file made the old way (whole-model cast) is not resumed into;
    float32 ids are unchanged."""
    from vlmclf.analysis.probe.features import FeatureKey
    from vlmclf.run.identity import content_identity

    def identity(dtype: str) -> dict:
        spec = f'{{"model": "random:llava", "dtype": "{dtype}"}}'
        return content_identity(
            spec, class_names=["a"], templates=None, prompts=None, max_new_tokens=None,
            preprocessing={}, base_url=None, weights=None, examples="x",
        )  # fmt: skip

    assert "half_precision" not in identity("float32")
    assert identity("bfloat16")["half_precision"] == "from_pretrained"
    key = dict(model="m", weights=None, kind="hidden", layer=-1, question="q", dataset="d",
               split="test", examples="e", poolings=("mean",))  # fmt: skip
    assert "half_precision" not in FeatureKey(**key).as_dict()
    assert FeatureKey(**key, dtype="bfloat16").as_dict()["half_precision"] == "from_pretrained"
