"""The organism's encoder-by-LLM grid: its weaker parts, LoRA, training, and the shipped cells.

The parts are checked against independent computations (a hook inside the encoder's own forward,
a slow per-group rounding loop, the unmerged LoRA forward); the shipped cells must load offline
and answer as their records say.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vlmclf.data.idx import read_fashion_mnist
from vlmclf.methods import make_method
from vlmclf.organism import components, load_organism, train_organism
from vlmclf.organism.adapters import lora_state, merged_copy, with_lora
from vlmclf.organism.grid import EVALUATION_FILE, GRID_RECIPE, grid_options
from vlmclf.organism.load import GRID, RECORD_FILE, default_weights_dir
from vlmclf.organism.vlm import OrganismVLM
from vlmclf.run.runner import RunConfig, run
from vlmclf.spec import RunSpec


@pytest.fixture(scope="module")
def test_split():
    return read_fashion_mnist(split="test")


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_round_weights_matches_a_slow_per_group_loop():
    weight = torch.randn(6, 64, generator=torch.Generator().manual_seed(1))
    rounded = components.round_weights(weight, bits=3, group=32).numpy()
    flat = weight.numpy().reshape(-1)
    slow = np.empty_like(flat)
    for start in range(0, flat.size, 32):
        group = flat[start : start + 32]
        low, high = group.min(), group.max()
        levels = low + (high - low) / 7 * np.arange(8)
        slow[start : start + 32] = [levels[np.argmin(np.abs(levels - w))] for w in group]
    np.testing.assert_allclose(rounded.reshape(-1), slow, atol=1e-6)
    assert all(len(np.unique(g)) <= 8 for g in rounded.reshape(-1, 32))


def test_weak_encoder_is_the_output_of_block_2_inside_the_networks_own_forward(test_split):
    images = [test_split.examples[i].load() for i in range(2)]
    model = components.load_image_encoder()
    seen = []
    handle = model._blocks[2].register_forward_hook(lambda m, i, out: seen.append(out))
    try:
        with torch.no_grad():
            model.extract_features(components.preprocess_images(images))
    finally:
        handle.remove()
    tokens = components.encode_visual_tokens(images, encoder=components.WEAK_IMAGE_ENCODER)
    assert tokens.shape == (2, components.NUM_VISUAL_TOKENS, 24)
    torch.testing.assert_close(tokens[:, 0], seen[0].mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="unknown image encoder"):
        components.encode_visual_tokens(images, encoder="resnet")


def test_merged_lora_equals_the_adapted_forward():
    base = tiny_llama()
    adapted, params = with_lora(base, rank=4, alpha=8.0)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.1)  # B starts at zero; give it a real update to merge
    ids = torch.tensor([[1, 5, 7, 9, 3]])
    with torch.no_grad():
        want = adapted(ids).logits
        merged = merged_copy(base, lora_state(adapted), {"rank": 4, "alpha": 8.0})
        got = merged(ids).logits
        unchanged = base(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unchanged, want, atol=1e-3)  # the base copy is left alone
    with pytest.raises(ValueError, match="missing"):
        merged_copy(base, {}, {"rank": 4, "alpha": 8.0})


def test_grid_cells_differ_in_the_intended_components_only():
    assert set(GRID) == {"grid-lite0-smollm2", "grid-block2-smollm2", "grid-lite0-smollm2w3",
                         "grid-block2-smollm2w3", "grid-lite0-smollm2-lora"}  # fmt: skip
    lora, frozen = grid_options("grid-lite0-smollm2-lora"), grid_options("grid-lite0-smollm2")
    assert {k: v for k, v in lora.items() if not k.startswith("lora")} == frozen
    assert all(grid_options(n)["steps"] == GRID_RECIPE["steps"] for n in GRID)
    with pytest.raises(ValueError, match="unknown grid organism"):
        grid_options("grid-vit-llama")


def test_short_lora_training_on_the_weak_encoder_moves_the_adapters(tmp_path):
    """A 3-step run of the LoRA recipe on the weak encoder: the loss is finite, the adapters
    leave zero, and the folder loads back with the adapters merged (not into the shared LM)."""
    options = grid_options("grid-lite0-smollm2-lora")
    options |= {"image_encoder": components.WEAK_IMAGE_ENCODER, "steps": 3, "batch_size": 2,
                "captions": 10}  # fmt: skip
    record = train_organism("vlm", tmp_path / "cell", progress=False, **options)
    assert np.isfinite(record["final_loss"]) and "LoRA" in record["trained"]
    config = json.loads((tmp_path / "cell" / "config.json").read_text())
    assert config["projector"]["in_dim"] == 24 and config["lm_adapters"]["rank"] == 8
    from safetensors.torch import load_file

    adapters = load_file(str(tmp_path / "cell" / "lm_adapters.safetensors"))
    assert adapters["layers.0.q_proj.B"].dtype == torch.float16
    assert any(name.endswith(".B") and t.abs().max() > 0 for name, t in adapters.items())
    model = load_organism("organism:grid-lite0-smollm2-lora", weights_dir=str(tmp_path / "cell"))
    assert isinstance(model, OrganismVLM) and model.image_encoder == components.WEAK_IMAGE_ENCODER
    assert model.lm is not components.load_language_model()[0]


def test_a_config_whose_projector_does_not_fit_its_encoder_is_refused(tmp_path):
    folder = default_weights_dir("grid-block2-smollm2")
    config = json.loads((folder / "config.json").read_text())
    config["projector"]["in_dim"] = 1280
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="projector.in_dim is 1280 but efficientnet-lite0-block2"):
        load_organism("organism:grid-block2-smollm2", weights_dir=str(tmp_path))


def grid_run(name: str, store: Path, limit: int):
    """The demo's run of a grid cell (open-world generation), through the project's runner."""
    spec = RunSpec(model=f"organism:{name}", dataset="fashion_mnist", method="generate",
                   setting="open")  # fmt: skip
    return run(spec, RunConfig(store_path=store, limit=limit, progress=False), make_method)


def test_every_cell_was_trained_with_the_grid_recipe():
    """The four grid folders by ``vlmclf organism grid``; the strong frozen cell is
    ``organism:vlm-uniform``, whose record shows the same recipe."""
    for name in GRID:
        record = json.loads((default_weights_dir(name) / RECORD_FILE).read_text())
        recipe = {k: record["args"][k] for k in ("steps", "batch_size", "freq", "seed")}
        assert recipe == {k: GRID_RECIPE[k] for k in recipe}, name
        if name == "grid-lite0-smollm2":
            assert default_weights_dir(name) == default_weights_dir("vlm-uniform")
        else:
            assert record["command"].startswith(f"vlmclf organism grid {name} --out ")
            assert record["grid"]["recipe"] == GRID_RECIPE


def test_shipped_grid_loads_offline_and_answers_as_recorded(tmp_path, monkeypatch):
    """Every cell loads from the package alone (the hub unreachable) and gives the answers
    recorded for its first test images (the full recorded accuracy: the slow test)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recorded = json.loads(EVALUATION_FILE.read_text())
    assert set(recorded) == set(GRID)
    for name in GRID:
        check = recorded[name]["check"]
        result = grid_run(name, tmp_path / "runs.sqlite", check["limit"])
        assert [p.example_id for p in result.predictions] == check["example_ids"], name
        assert [p.text for p in result.predictions] == check["answers"], name
        assert [p.pred for p in result.predictions] == check["preds"], name


@pytest.mark.slow
def test_shipped_grid_gives_the_recorded_accuracies(tmp_path):
    for name, recorded in json.loads(EVALUATION_FILE.read_text()).items():
        evaluation = recorded["evaluation"]
        result = grid_run(name, tmp_path / "runs.sqlite", evaluation["limit"])
        assert result.summary["accuracy"] == pytest.approx(evaluation["accuracy"], abs=1e-4)


# ------------------------------------------------------------- demo finding 6


def synthetic_grid(encoder_hurts: str, n: int = 400, seed: int = 0):
    """Correctness of the five cells where the weak encoder fails on every image of one group
    (``encoder_hurts``: "tops" or "rest") and the weak LLM on a random 20% of all images."""
    names = read_fashion_mnist(split="test").class_names
    labels = np.arange(n) % 10
    tops = labels_in_tops(labels, names)
    hurt = tops if encoder_hurts == "tops" else ~tops
    llm_miss = np.random.default_rng(seed).random(n) < 0.2
    cells = {
        "grid-lite0-smollm2": np.ones(n),
        "grid-block2-smollm2": (~hurt).astype(float),
        "grid-lite0-smollm2w3": (~llm_miss).astype(float),
        "grid-block2-smollm2w3": (~hurt & ~llm_miss).astype(float),
        "grid-lite0-smollm2-lora": np.ones(n),
    }
    return {f"organism:{k}": v for k, v in cells.items()}, labels, names


def labels_in_tops(labels: np.ndarray, names: list[str]) -> np.ndarray:
    from vlmclf.analysis.demo.grid import FASHION_TOPS

    return np.array([names[label] in FASHION_TOPS for label in labels])


def test_finding_6_recovers_a_known_encoder_effect_on_the_tops():
    from vlmclf.analysis.demo.grid import encoder_vs_llm

    columns, labels, names = synthetic_grid("tops")
    finding = encoder_vs_llm(columns, labels, names, n_boot=500)
    effects = {(e["group"], e["component"]): e
               for e in finding["details"]["attribute"]["effects"] if "effect" in e}  # fmt: skip
    tops = labels_in_tops(labels, names)
    llm_ok_on_tops = columns["organism:grid-lite0-smollm2w3"][tops].mean()
    # pairs lite0/block2 (1 on every top) and lite0w3/block2w3 (1 where the weak LLM is right)
    assert effects[("fine", "encoder")]["effect"] == pytest.approx((1 + llm_ok_on_tops) / 2)
    assert effects[("coarse", "encoder")]["effect"] == pytest.approx(0.0)
    # the weak LLM costs its misses where the encoder lets the cell be right: on the tops only
    # with Lite0, on the rest with both encoders
    llm_ok_on_rest = columns["organism:grid-lite0-smollm2w3"][~tops].mean()
    assert effects[("fine", "llm")]["effect"] == pytest.approx((1 - llm_ok_on_tops) / 2)
    assert effects[("coarse", "llm")]["effect"] == pytest.approx(1 - llm_ok_on_rest)
    assert effects[("fine - coarse", "llm")]["ci"][0] < 0
    # encoder − LLM, per group and as the difference of the two contrasts
    versus = finding["details"]["encoder_minus_llm"]
    for group, name in (("tops", "fine"), ("rest", "coarse")):
        want = effects[(name, "encoder")]["effect"] - effects[(name, "llm")]["effect"]
        assert versus[group]["diff"] == pytest.approx(want)
    leaning = (effects[("fine - coarse", "encoder")]["effect"]
               - effects[("fine - coarse", "llm")]["effect"])  # fmt: skip
    assert versus["tops - rest"]["diff"] == pytest.approx(leaning)
    assert versus["tops - rest"]["ci"][0] > 0
    assert finding["verdict"] == (
        "encoder vs LLM: holds; LLM learning helps the tops: not shown at this size (the "
        "interval includes 0: no gain on the tops)"
    )
    json.dumps(finding)  # stored as part of the demo analysis


def test_finding_6_says_reversed_when_the_encoder_matters_on_the_rest():
    from vlmclf.analysis.demo.grid import encoder_vs_llm

    columns, labels, names = synthetic_grid("rest")
    verdict = encoder_vs_llm(columns, labels, names, n_boot=500)["verdict"]
    assert verdict.startswith("encoder vs LLM: reversed: the LLM's gain leans toward the tops")
