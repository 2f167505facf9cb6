"""The organism: building and loading each model, its protocols, the caches, short training runs.

Everything runs on the real pretrained parts from the installed packages and on Fashion-MNIST;
the GGUF is converted once per module into a temporary cache directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmclf.data.idx import read_fashion_mnist
from vlmclf.models.base import ImageTextEncoder, VisionLanguageModel
from vlmclf.organism import components, features, load_organism, train_organism
from vlmclf.organism.clip import OrganismCLIP
from vlmclf.organism.vlm import OrganismVLM, positions_from_mask

QUESTION = "What type of object is in this photo?"


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory):
    """A fresh cache directory for this module; the memoised loaders start empty."""
    root = tmp_path_factory.mktemp("vlmclf-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLMCLF_CACHE_DIR", str(root))
        components.clear_loaded_components()
        yield root
        components.clear_loaded_components()


@pytest.fixture(scope="module")
def vlm(cache_root: Path) -> OrganismVLM:
    model = load_organism("organism:vlm")
    assert isinstance(model, OrganismVLM)
    return model


@pytest.fixture(scope="module")
def clip(cache_root: Path) -> OrganismCLIP:
    model = load_organism("organism:clip")
    assert isinstance(model, OrganismCLIP)
    return model


@pytest.fixture(scope="module")
def test_split():
    return read_fashion_mnist(split="test")


@pytest.fixture(scope="module")
def images(test_split):
    return [test_split.examples[i].load() for i in range(3)]


# ------------------------------------------------------------------ components and caches


def test_gguf_is_converted_once_then_reused(vlm, cache_root, monkeypatch):
    folder = components.smollm2_cache_path()
    assert folder.parent.parent == cache_root
    assert (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the GGUF was converted a second time")

    monkeypatch.setattr(components, "convert_gguf_to_safetensors", no_second_conversion)
    components.clear_loaded_components()
    reloaded, _ = components.load_language_model()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(reloaded.state_dict()[name], vlm.lm.state_dict()[name])


def test_feature_cache_matches_the_uncached_encoder_and_is_reused(
    cache_root, test_split, images, monkeypatch
):
    cached = features.dataset_visual_tokens(test_split, [2, 0, 1])
    assert cached.shape == (3, components.NUM_VISUAL_TOKENS, components.IMAGE_FEATURE_DIM)
    assert features.feature_cache_path("fashion_mnist", "test").is_file()
    direct = components.encode_visual_tokens([images[2], images[0], images[1]])
    torch.testing.assert_close(cached, direct)
    pooled = components.load_image_encoder().extract_features(
        components.preprocess_images(images[:1])
    )
    torch.testing.assert_close(cached[1, 0], pooled.mean(dim=(2, 3))[0])

    def no_encoding(*args, **kwargs):
        raise AssertionError("a cached example was encoded again")

    monkeypatch.setattr(features, "encode_visual_tokens", no_encoding)
    torch.testing.assert_close(features.dataset_visual_tokens(test_split, [1]), cached[2:3])


# --------------------------------------------------------------------------- the VLM


def test_vlm_implements_the_protocol(vlm):
    assert isinstance(vlm, VisionLanguageModel)
    assert vlm.name == "organism:vlm"
    assert vlm.context_length == 8192
    assert type(vlm.lm).__name__ == "LlamaForCausalLM"
    text = vlm.format_prompt(QUESTION)
    assert "<|im_start|>user\n<image>\nWhat type of object" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_generate_returns_answers_and_batching_changes_nothing(vlm, images):
    questions = [QUESTION, "Describe the image concisely, please, in a few words."]
    batched = vlm.generate(images[:2], questions, max_new_tokens=8)
    assert all(isinstance(text, str) and text for text in batched)
    single = [
        vlm.generate([image], [q], max_new_tokens=8)[0]
        for image, q in zip(images, questions, strict=False)
    ]
    assert batched == single


def test_prompt_embeddings_splice_the_visual_tokens(vlm, images):
    questions = [QUESTION, "What is it?"]
    embeds, mask = vlm.prompt_embeddings(images[:2], questions)
    lengths = [vlm.prompt_length(q) for q in questions]
    assert embeds.shape == (2, max(lengths), vlm.lm.config.hidden_size)
    assert mask.sum(dim=1).tolist() == lengths
    assert mask[1, : lengths[0] - lengths[1]].sum() == 0  # left padding
    before, after = vlm.prompt_pieces(questions[0])
    visual = vlm.project(vlm.visual_tokens(images[:1]))[0]
    expected = torch.cat([vlm.embed_ids(before), visual, vlm.embed_ids(after)])
    torch.testing.assert_close(embeds[0], expected)

    text_embeds, text_mask = vlm.text_prompt_embeddings(questions)
    text_ids = [vlm.text_prompt_ids(q) for q in questions]
    assert text_mask.sum(dim=1).tolist() == [len(ids) for ids in text_ids]
    assert "<image>" not in vlm.tokenizer.decode(text_ids[0])
    torch.testing.assert_close(text_embeds[0, -len(text_ids[0]) :], vlm.embed_ids(text_ids[0]))
    # the image prompt minus the visual tokens and the newline after them is the text prompt
    assert lengths[0] == len(text_ids[0]) + vlm.num_visual_tokens + 1


def test_forward_on_prompt_embeddings_reproduces_the_models_logits(vlm, images):
    questions = [QUESTION, "What is it?"]
    embeds, mask = vlm.prompt_embeddings(images[:2], questions)
    with torch.no_grad():
        batched = vlm.forward(embeds, mask).logits[:, -1]
        alone = [
            vlm.forward(*vlm.prompt_embeddings([im], [q])).logits[0, -1]
            for im, q in zip(images[:2], questions, strict=True)
        ]
        generated = vlm.lm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            generation_config=vlm._greedy_config(1),
            output_scores=True,
            return_dict_in_generate=True,
        )
    torch.testing.assert_close(batched, torch.stack(alone), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(generated.scores[0], batched, atol=2e-4, rtol=1e-4)
    assert generated.sequences[:, 0].tolist() == batched.argmax(-1).tolist()
    assert positions_from_mask(mask)[1, -1] == mask[1].sum() - 1


def test_hidden_features_shapes_and_layers(vlm, images):
    out = vlm.hidden_features(images[:2], [QUESTION, "What is it?"], layer=-1)
    hidden = vlm.lm.config.hidden_size
    assert out.last_token.shape == (2, hidden) and out.mean.shape == (2, hidden)
    assert out.last_token.dtype == torch.float32 and torch.isfinite(out.mean).all()
    embeds, mask = vlm.prompt_embeddings(images[:1], [QUESTION])
    layer0 = vlm.hidden_features(images[:1], [QUESTION], layer=0)
    torch.testing.assert_close(layer0.last_token[0], embeds[0, -1])
    torch.testing.assert_close(layer0.mean[0], embeds[0].mean(dim=0))
    with pytest.raises(ValueError, match="out of range"):
        vlm.hidden_features(images[:1], [QUESTION], layer=99)


# -------------------------------------------------------------------------- the CLIP


def test_clip_implements_the_protocol(clip, images):
    assert isinstance(clip, ImageTextEncoder)
    image_embeds = clip.encode_images(images)
    text_embeds = clip.encode_texts(["a photo of a sneaker.", "a photo of a bag."])
    assert image_embeds.shape == (3, 256) and text_embeds.shape == (2, 256)
    assert image_embeds.dtype == torch.float32
    torch.testing.assert_close(image_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text_embeds.norm(dim=-1), torch.ones(2))


def test_load_organism_rejects_bad_specs_and_folders(tmp_path):
    with pytest.raises(ValueError, match="organism:vlm"):
        load_organism("organism:llava")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_organism("organism:clip", weights_dir=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"kind": "vlm", "resolution": 96}))
    with pytest.raises(ValueError, match="expected 'clip'"):
        load_organism("organism:clip", weights_dir=str(tmp_path))


def test_shipped_records_describe_the_training():
    for kind in ("vlm", "clip"):
        folder = Path(components.__file__).parent / "weights" / kind
        record = json.loads((folder / "training_record.json").read_text())
        counts = record["data"]["captions"]["counts"]
        assert sum(counts.values()) == record["data"]["captions"]["total"]
        assert record["command"].startswith(f"vlmclf organism train {kind} --seed ")
        assert record["final_loss"] < record["loss"]["first_step_loss"]
    vlm_record = json.loads((folder.parent / "vlm" / "training_record.json").read_text())
    ranking = vlm_record["data"]["captions"]["ranking"]
    counts = vlm_record["data"]["captions"]["counts"]
    assert [counts[name] for name in ranking] == sorted(counts.values(), reverse=True)


def test_every_shipped_organism_has_weights_config_and_a_reproducing_command():
    """``organism:<name>`` for each shipped name: its folder holds what loading needs and the
    one command that produced it; the uniform organism differs from the Zipf one in --freq."""
    from vlmclf.organism.load import ORGANISMS, WEIGHT_FILES, default_weights_dir, read_config
    from vlmclf.run.identity import weights_fingerprint

    for name, (kind, _) in ORGANISMS.items():
        folder = default_weights_dir(name)
        read_config(folder, kind)
        assert (folder / WEIGHT_FILES[kind]).is_file()
        record = json.loads((folder / "training_record.json").read_text())
        assert record["command"].startswith("vlmclf "), name
        assert weights_fingerprint(f"organism:{name}") is not None
    uniform = json.loads((default_weights_dir("vlm-uniform") / "training_record.json").read_text())
    assert "--freq uniform" in uniform["command"]
    assert len(set(uniform["data"]["captions"]["counts"].values())) == 1
    # the reversed organism: the Zipf organism's caption counts, its class ranking reversed
    zipf = json.loads((default_weights_dir("vlm") / "training_record.json").read_text())
    flipped = json.loads((default_weights_dir("vlm-reversed") / "training_record.json").read_text())
    ranking = zipf["data"]["captions"]["ranking"]
    zipf_counts = zipf["data"]["captions"]["counts"]
    flipped_counts = flipped["data"]["captions"]["counts"]
    assert [flipped_counts[n] for n in reversed(ranking)] == [zipf_counts[n] for n in ranking]
    assert "--freq" in flipped["command"] and flipped["args"]["seed"] == zipf["args"]["seed"]
    with pytest.raises(ValueError, match="organism:vlm-uniform"):
        load_organism("organism:vlm-uniformish")


# ------------------------------------------------------------------------- training


def assert_same_weights(first: Path, second: Path, filename: str) -> None:
    """Same seed and arguments, same trained tensors: the shipped weights are reproducible."""
    a, b = load_file(str(first / filename)), load_file(str(second / filename))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_short_vlm_training_lowers_the_loss(vlm, cache_root, test_split, tmp_path):
    weights_file = tmp_path / "freq.json"
    only_ankle_boots = {name: 0 for name in test_split.class_names}
    only_ankle_boots["Ankle boot"] = 1
    weights_file.write_text(json.dumps(only_ankle_boots))
    arguments = dict(
        seed=1, steps=5, freq=str(weights_file), progress=False, batch_size=3, captions=3, lr=5e-3
    )
    record = train_organism("vlm", tmp_path / "vlm", **arguments)
    losses = [point["mean_loss"] for point in record["loss"]["curve"]]
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert record["data"]["captions"]["counts"]["Ankle boot"] == 3
    assert "--freq " + str(weights_file) in record["command"]
    again = train_organism("vlm", tmp_path / "again", **arguments)
    assert again["loss"]["curve"] == record["loss"]["curve"]
    assert_same_weights(tmp_path / "vlm", tmp_path / "again", "projector.safetensors")
    trained = load_organism("organism:vlm", weights_dir=str(tmp_path / "vlm"))
    assert trained.lm is components.load_language_model()[0]  # one frozen LM, shared
    assert not torch.equal(trained.projector.net[0].weight, vlm.projector.net[0].weight)


def test_short_clip_training_lowers_the_loss(cache_root, tmp_path):
    arguments = dict(seed=0, steps=40, progress=False, batch_size=16, captions=30)
    record = train_organism("clip", tmp_path / "clip", **arguments)
    train_organism("clip", tmp_path / "again", **arguments)
    assert_same_weights(tmp_path / "clip", tmp_path / "again", "heads.safetensors")
    assert record["data"]["captions"]["freq"] == "uniform"
    assert record["full_set_loss"]["after"] < record["full_set_loss"]["before"]
    assert record["loss"]["final_loss"] < record["loss"]["first_step_loss"]
    assert isinstance(
        load_organism("organism:clip", weights_dir=str(tmp_path / "clip")), OrganismCLIP
    )


# ------------------------------------------------------------------- accuracy (slow)


@pytest.mark.slow
def test_clip_zero_shot_beats_chance_by_far(clip, test_split):
    n = 200
    images = [test_split.examples[i].load() for i in range(n)]
    labels = torch.tensor([test_split.examples[i].label for i in range(n)])
    texts = [f"a photo of a {name}." for name in test_split.class_names]
    predicted = (clip.encode_images(images) @ clip.encode_texts(texts).T).argmax(dim=1)
    assert (predicted == labels).float().mean() > 0.6


@pytest.mark.slow
def test_vlm_open_world_names_the_class_well_above_chance(vlm, test_split):
    n = 60
    examples = test_split.examples[:n]
    answers = vlm.generate([e.load() for e in examples], [QUESTION] * n, max_new_tokens=16)
    names = test_split.class_names
    hits = sum(names[e.label].lower() in a.lower() for e, a in zip(examples, answers, strict=True))
    assert hits / n > 0.3
