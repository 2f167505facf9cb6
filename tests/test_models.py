"""The model layer on tiny random models of the real architectures: loading, generation,
prompt lengths, hidden features, embeddings and the hf: round trip, all offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlmclf.models import is_encoder, is_vlm, load_model
from vlmclf.models.families import GENERIC_VLM, adapter_for_config
from vlmclf.models.hf import HFVisionLanguageModel
from vlmclf.models.random_models import RANDOM_FAMILIES, build_random, save_random_model

RECENT_FAMILIES = [
    "llava_onevision", "gemma3", "qwen3_vl", "internvl", "idefics3", "smolvlm", "paligemma",
    "mllama", "mistral3", "pixtral",
]  # fmt: skip
VLM_FAMILIES = [
    "llava", "llava_next", "blip2", "instructblip", "qwen2_vl", "qwen2_5_vl", *RECENT_FAMILIES,
]  # fmt: skip
ENCODER_FAMILIES = ["clip", "siglip"]
QUESTIONS = ["What type of object is in this photo?", "Identify the object."]
# Image tokens for the default 448x448 probe: fixed by the configs in random_models.py.
IMAGE_TOKENS = {
    "llava": 16, "llava_next": 24, "blip2": 8, "instructblip": 8, "qwen2_vl": 16, "qwen2_5_vl": 16,
    # Where the processor writes more than image tokens for the placeholder, all of it counts:
    # OneVision 4 base + 4 tile + newline tokens; Gemma 3 "\n\n" <boi> 4 <eoi> "\n\n" around
    # its <boi> placeholder; InternVL <img> 4 x (tiles + thumbnail) </img>; Idefics3/SmolVLM
    # 4 tiles + a global view of 4 tokens with their markers; PaliGemma 16 + BOS + "\n".
    "llava_onevision": 24, "gemma3": 9, "qwen3_vl": 16, "internvl": 22, "idefics3": 34,
    "smolvlm": 34, "paligemma": 18,
    # Mistral 3: 4 x 4 merged patches, a [IMG_BREAK] after each row but the last ([IMG_END]).
    # Llama 3.2 Vision keeps its one <|image|> token: the tiles enter through cross-attention.
    "mistral3": 20, "mllama": 1, "pixtral": 72,
}  # fmt: skip
CROSS_ATTENTION_FAMILIES = {"mllama"}


@pytest.fixture(scope="module")
def loaded():
    """Each random model built once for the whole module."""
    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_model(f"random:{family}", seed=0)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Two images of different sizes and aspect ratios, one of them greyscale."""
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    tall = Image.fromarray(rng.integers(0, 256, (30, 24), dtype=np.uint8), mode="L")
    return [wide, tall]


@pytest.mark.parametrize("family", sorted(RANDOM_FAMILIES))
def test_random_build_is_deterministic_and_leaves_global_rng(family):
    rng_state = torch.get_rng_state()
    first, _, _ = build_random(family, seed=0)
    again, _, _ = build_random(family, seed=0)
    other, _, _ = build_random(family, seed=1)
    assert torch.equal(torch.get_rng_state(), rng_state)
    a, b, c = first.state_dict(), again.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert any(not torch.equal(a[key], c[key]) for key in a)
    assert all(t.dtype == torch.float32 for t in a.values() if t.is_floating_point())
    assert 50_000 < sum(p.numel() for p in first.parameters()) < 3_000_000


@pytest.mark.parametrize("family", sorted(RANDOM_FAMILIES))
def test_family_is_detected_from_config_and_vocab_matches(family, loaded):
    model = loaded(family)
    assert adapter_for_config(model.model.config).name == family
    text_config = model.model.config.get_text_config()
    assert text_config.vocab_size == len(model.tokenizer)
    if family == "instructblip":
        qformer = model.model.config.qformer_config
        assert qformer.vocab_size == len(model.processor.qformer_tokenizer)
    assert is_vlm(model) == (family in VLM_FAMILIES)
    assert is_encoder(model) == (family in ENCODER_FAMILIES)


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_encoder_embeddings_are_normalised_and_batch_independent(family, loaded, images):
    encoder = loaded(family)
    image_embeds = encoder.encode_images(images)
    texts = ["a photo of a goldfish.", "a photo of a 2012 Aston Martin V8 Vantage Convertible."]
    text_embeds = encoder.encode_texts(texts)
    assert image_embeds.shape == (2, 32) and text_embeds.shape == (2, 32)
    assert image_embeds.dtype == torch.float32 and text_embeds.dtype == torch.float32
    torch.testing.assert_close(image_embeds.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(text_embeds.norm(dim=-1), torch.ones(2))
    alone = encoder.encode_texts(texts[:1])
    torch.testing.assert_close(alone[0], text_embeds[0], atol=1e-5, rtol=0)
    assert not torch.allclose(text_embeds[0], text_embeds[1])


def test_siglip_texts_are_padded_to_max_length_without_mask(loaded):
    encoder = loaded("siglip")
    tokens = encoder.tokenizer(["a dog"], padding="max_length", max_length=64, return_tensors="pt")
    assert tokens["input_ids"].shape == (1, 64)
    with torch.inference_mode():
        manual = encoder.model.get_text_features(input_ids=tokens["input_ids"])
    manual = getattr(manual, "pooler_output", manual)
    expected = torch.nn.functional.normalize(manual.float(), dim=-1)
    torch.testing.assert_close(encoder.encode_texts(["a dog"]), expected)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_generate_returns_greedy_answers_within_the_token_budget(family, loaded, images):
    model = loaded(family)
    answers = model.generate(images, QUESTIONS, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(answer, str) for answer in answers)
    rows = model.generate_tokens(images, QUESTIONS, max_new_tokens=3)
    assert all(1 <= len(row) <= 3 for row in rows)
    first = model.generate_tokens(images, QUESTIONS, max_new_tokens=1)
    assert [row[:1] for row in rows] == first
    expected = [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]
    assert answers == expected
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(images, QUESTIONS, max_new_tokens=0)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_prompt_length_counts_image_tokens(family, loaded):
    model = loaded(family)
    prompt = model.format_prompt(QUESTIONS[0])
    text_ids = model.tokenizer(prompt, add_special_tokens=model.adapter.add_special_tokens)
    text_ids = text_ids["input_ids"]
    placeholders = sum(token == model.model.config.image_token_id for token in text_ids)
    length = model.prompt_length(QUESTIONS[0])
    assert length > len(text_ids) or family in CROSS_ATTENTION_FAMILIES
    assert length == len(text_ids) - placeholders + IMAGE_TOKENS[family]
    assert model.context_length == model.model.config.get_text_config().max_position_embeddings


@pytest.mark.parametrize("family", VLM_FAMILIES)
@pytest.mark.parametrize("layer", [-1, 1])
def test_hidden_features_equal_a_manual_language_model_forward(family, layer, loaded, images):
    model = loaded(family)
    features = model.hidden_features(images, QUESTIONS, layer=layer)
    hidden_size = model.model.config.get_text_config().hidden_size
    assert features.last_token.shape == (2, hidden_size) == features.mean.shape
    assert features.last_token.dtype == torch.float32 and features.mean.dtype == torch.float32

    batch = model.build_inputs(images, QUESTIONS)
    inputs = model.language_model_inputs(batch)
    mask = inputs["attention_mask"]
    if isinstance(mask, dict) or mask.dim() != 2:  # Gemma 3, PaliGemma build 4-D masks first
        mask = batch["attention_mask"]
    assert not bool(mask.all()), "the two prompts should differ in length (padding is tested)"
    with torch.inference_mode():
        output = model.language_model(**inputs, output_hidden_states=True)
    hidden = output.hidden_states[layer]
    for row in range(2):
        real = hidden[row][mask[row].bool()]
        torch.testing.assert_close(features.last_token[row], real[-1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(features.mean[row], real.mean(dim=0), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_hidden_features_do_not_depend_on_left_padding(family, loaded, images):
    model = loaded(family)
    batch = model.hidden_features(images, QUESTIONS)
    for row in range(2):
        alone = model.hidden_features(images[row : row + 1], QUESTIONS[row : row + 1])
        torch.testing.assert_close(batch.last_token[row], alone.last_token[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batch.mean[row], alone.mean[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="layer"):
        model.hidden_features(images, QUESTIONS, layer=99)


@pytest.mark.parametrize("family", ["llava", "clip", "qwen2_vl"])
def test_saved_random_model_loads_back_through_hf(family, tmp_path, loaded, images):
    save_random_model(family, tmp_path / family, seed=0)
    reloaded = load_model(f"hf:{tmp_path / family}")
    original = loaded(family)
    assert reloaded.name == f"hf:{tmp_path / family}"
    assert reloaded.adapter.name == family
    saved, built = reloaded.model.state_dict(), original.model.state_dict()
    assert saved.keys() == built.keys()
    assert all(torch.equal(saved[key], built[key]) for key in built)
    if family in ENCODER_FAMILIES:
        torch.testing.assert_close(reloaded.encode_images(images), original.encode_images(images))
        texts = ["a photo of a tench.", "a dog"]
        torch.testing.assert_close(reloaded.encode_texts(texts), original.encode_texts(texts))
    else:
        assert reloaded.format_prompt("Q?") == original.format_prompt("Q?")
        assert reloaded.generate(images, QUESTIONS, 4) == original.generate(images, QUESTIONS, 4)


def test_generic_adapter_runs_a_chat_template_model_like_its_own_adapter(loaded, images):
    specific = loaded("qwen2_vl")
    generic = HFVisionLanguageModel(specific.model, specific.processor, GENERIC_VLM, "generic")
    assert generic.language_model is specific.language_model
    assert generic.format_prompt("Q?") == specific.format_prompt("Q?")
    assert generic.generate(images, QUESTIONS, 3) == specific.generate(images, QUESTIONS, 3)
    ours, theirs = (
        generic.hidden_features(images, QUESTIONS),
        specific.hidden_features(images, QUESTIONS),
    )
    torch.testing.assert_close(ours.last_token, theirs.last_token)


def test_reduced_precision_still_returns_float32_features(images):
    model = load_model("random:llava", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    features = model.hidden_features(images, QUESTIONS)
    assert features.last_token.dtype == torch.float32
    assert len(model.generate(images, QUESTIONS, max_new_tokens=2)) == 2


def test_mismatched_batch_is_rejected(loaded, images):
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        loaded("llava").generate(images, QUESTIONS[:1], max_new_tokens=2)
