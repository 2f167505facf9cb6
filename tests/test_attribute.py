"""`vlmclf attribute`: encoder vs LLM effects, recovered from synthetic stored runs whose true
effects are known, with components read from checkpoint configs or a --components file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vlmclf.analysis.views  # noqa: F401 - registers the report's views
from vlmclf.analysis.attribute import effect_rows, run_attribution, single_swaps
from vlmclf.analysis.components import (
    components_from_config,
    components_of_model,
    read_components_file,
)
from vlmclf.cli import app
from vlmclf.records import Prediction
from vlmclf.report.analyses import view_for
from vlmclf.spec import RunSpec
from vlmclf.store import RunStore

DATASETS = {"flowers102": "fine", "birds.jsonl": "fine", "imagenet": "coarse",
            "caltech101": "coarse"}  # fmt: skip
TRUE = {("fine", "encoder"): 0.20, ("fine", "llm"): 0.08,
        ("coarse", "encoder"): 0.07, ("coarse", "llm"): 0.08}  # fmt: skip
BASE = {"flowers102": 0.35, "birds.jsonl": 0.30, "imagenet": 0.55, "caltech101": 0.60}
N_IMAGES = 3000


def _checkpoint(root: Path, encoder: str, llm: str) -> str:
    """A VLM checkpoint folder whose config names its towers as LLaVA's configs do."""
    folder = root / f"{encoder}+{llm}".replace("/", "_")
    folder.mkdir()
    config = {"model_type": "llava", "text_config": {"_name_or_path": llm},
              "vision_config": {"_name_or_path": encoder, "model_type": "clip_vision_model"}}
    (folder / "config.json").write_text(json.dumps(config))
    return f"hf:{folder}"


def _store_grid(store_path: Path, models: dict[str, tuple[int, int]], seed: int = 7) -> None:
    """One run per (model, dataset): an image is answered right when its difficulty is below
    the model's accuracy there, so runs of one dataset are paired by image as real ones are."""
    rng = np.random.default_rng(seed)
    with RunStore(store_path) as store:
        for dataset, group in DATASETS.items():
            difficulty = rng.random(N_IMAGES)
            for model, (strong_encoder, strong_llm) in models.items():
                p = (BASE[dataset] + TRUE[(group, "encoder")] * strong_encoder
                     + TRUE[(group, "llm")] * strong_llm)  # fmt: skip
                spec = RunSpec(model=model, dataset=dataset, method="generate")
                preds = [
                    Prediction(f"img{i}", 0, text="a" if right else "b", pred=0 if right else 1,
                               hit=bool(right))
                    for i, right in enumerate(difficulty < p)
                ]  # fmt: skip
                store.start_run(spec.run_id, spec.canonical_json(), ["a", "b"], N_IMAGES)
                store.add_predictions(spec.run_id, preds)
                store.finish_run(spec.run_id, "done", 0.0)


def _groups_file(path: Path, models: dict[str, dict[str, str]] | None = None) -> Path:
    path.write_text(json.dumps({"models": models or {}, "groups": {"birds": "fine"}}))
    return path


def test_components_come_from_checkpoint_configs(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path, "openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5")
    assert components_of_model(model) == {"encoder": "openai/clip-vit-large-patch14-336",
                                          "llm": "lmsys/vicuna-7b-v1.5"}  # fmt: skip
    shape_only = {"vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152,
                                    "num_hidden_layers": 27},
                  "text_config": {"model_type": "qwen2", "hidden_size": 896}}  # fmt: skip
    assert components_from_config(shape_only) == {
        "encoder": "siglip_vision_model(hidden_size=1152, num_hidden_layers=27)",
        "llm": "qwen2(hidden_size=896)",
    }
    assert components_from_config({"model_type": "clip"}) is None
    assert components_of_model(f"hf:{tmp_path / 'nothing'}") is None
    assert components_of_model("random:llava") is None
    assert components_of_model("organism:vlm") == components_of_model("organism:vlm-uniform") == {
        "encoder": "efficientnet-lite0", "llm": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def test_single_swaps_pair_models_that_differ_in_one_component() -> None:
    grid = {"m1": {"encoder": "A", "llm": "X"}, "m2": {"encoder": "B", "llm": "X"},
            "m3": {"encoder": "A", "llm": "Y"}, "m4": {"encoder": "B", "llm": "Y"}}  # fmt: skip
    assert single_swaps(grid) == [("encoder", "m1", "m2"), ("llm", "m1", "m3"),
                                  ("llm", "m2", "m4"), ("encoder", "m3", "m4")]  # fmt: skip


def test_known_effects_are_recovered_from_a_two_by_two_grid(tmp_path: Path) -> None:
    store_path = tmp_path / "runs.sqlite"
    models = {_checkpoint(tmp_path, enc, llm): (enc == "strong-vit", llm == "strong-lm")
              for enc in ("weak-vit", "strong-vit") for llm in ("weak-lm", "strong-lm")}
    _store_grid(store_path, models)
    with RunStore(store_path) as store:
        result = run_attribution(store, store.list_runs(), n_boot=400,
                                 components_file=_groups_file(tmp_path / "c.json"))  # fmt: skip
        (stored,) = store.list_analyses("attribute")
    effects = {(e["group"], e["component"]): e for e in result["effects"]}
    for key, truth in TRUE.items():
        effect = effects[key]
        assert effect["effect"] == pytest.approx(truth, abs=0.02), key
        assert effect["ci"][0] <= truth <= effect["ci"][1], key
        assert effect["n_pairs"] == 2 and effect["n_datasets"] == 2
    contrast = effects[("fine - coarse", "encoder")]
    assert contrast["effect"] == pytest.approx(0.13, abs=0.02) and contrast["ci"][0] > 0
    llm_contrast = effects[("fine - coarse", "llm")]
    assert llm_contrast["ci"][0] <= 0 <= llm_contrast["ci"][1]  # the LLM helps both alike
    assert not any("cannot separate" in v for v in result["verdicts"])
    assert all(p["diff"] * p["sign"] > 0 for p in result["pairs"]) and len(result["pairs"]) == 16
    assert stored.result["effects"] == result["effects"]


def test_one_pair_on_one_dataset_matches_the_metrics_paired_bootstrap() -> None:
    from vlmclf.analysis.attribute import Grid, attribute
    from vlmclf.metrics.classification import paired_bootstrap

    rng = np.random.default_rng(3)
    a, b = rng.random(800) < 0.5, rng.random(800) < 0.62
    grid = Grid({"cars": {"m1": a, "m2": b}}, {})
    components = {"m1": {"encoder": "A", "llm": "X"}, "m2": {"encoder": "B", "llm": "X"}}
    result = attribute(grid, components, {"cars": "fine"}, n_boot=4000, seed=1)
    (effect,) = [e for e in result["effects"] if "effect" in e]
    reference = paired_bootstrap(b.astype(float), a.astype(float), n_boot=4000, seed=2)
    assert (effect["group"], effect["component"]) == ("fine", "encoder")
    assert effect["effect"] == pytest.approx(reference["diff"], abs=1e-12)
    assert effect["ci"] == pytest.approx(reference["ci"], abs=0.008)


def test_a_diagonal_grid_says_it_cannot_separate_the_effects(tmp_path: Path) -> None:
    store_path = tmp_path / "runs.sqlite"
    _store_grid(store_path, {"weak": (0, 0), "strong": (1, 1)})
    components = {"weak": {"encoder": "A", "llm": "X"}, "strong": {"encoder": "B", "llm": "Y"}}
    with RunStore(store_path) as store:
        result = run_attribution(store, store.list_runs(), n_boot=50,
                                 components_file=_groups_file(tmp_path / "c.json", components))
    assert result["pairs"] == []
    assert all("effect" not in e for e in result["effects"])
    assert result["verdicts"] == [
        "the grid cannot separate the encoder effect: no two models differ in the encoder "
        "alone (they differ in the LLM too)",
        "the grid cannot separate the LLM effect: no two models differ in the LLM alone "
        "(they differ in the encoder too)",
    ]


def test_components_file_errors_name_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text('{"models": {"m": {"encoder": "A"}}}')
    with pytest.raises(ValueError, match=r"c.json: models.m: needs non-empty 'encoder' and 'llm'"):
        read_components_file(bad)
    bad.write_text('{"groups": {"birds": "medium"}}')
    with pytest.raises(ValueError, match=r"groups.birds: 'medium' is not 'fine' or 'coarse'"):
        read_components_file(bad)
    bad.write_text('{"models": \n')
    with pytest.raises(ValueError, match=r"c.json:2: invalid JSON"):
        read_components_file(bad)
    for missing in (tmp_path / "absent.json", tmp_path):  # a folder is no file either
        with pytest.raises(ValueError, match=r"^--components: no file at "):
            read_components_file(missing)


def test_cli_prints_the_table_and_verdicts_and_refuses_unknown_models(tmp_path: Path) -> None:
    store_path = tmp_path / "runs.sqlite"
    _store_grid(store_path, {"m1": (0, 0), "m2": (1, 0), "m3": (0, 1)})
    models = {"m1": {"encoder": "A", "llm": "X"}, "m2": {"encoder": "B", "llm": "X"},
              "m3": {"encoder": "A", "llm": "Y"}}  # fmt: skip
    components = _groups_file(tmp_path / "c.json", models)
    base = ["attribute", "--store", str(store_path), "--out", str(tmp_path / "out"),
            "--n-boot", "200"]  # fmt: skip
    result = CliRunner().invoke(app, [*base, "--components", str(components)])
    assert result.exit_code == 0, result.output
    assert "3 models on 4 datasets, 2 single-component pairs" in result.output
    assert "encoder effect on fine: +0.199 [" in result.output and "], excludes 0" in result.output
    assert "encoder effect, fine - coarse: +0.126 [" in result.output
    assert "larger on fine-grained data" in result.output
    payload = json.loads(CliRunner().invoke(
        app, [*base, "--components", str(components), "--json"]).stdout)  # fmt: skip
    rows = effect_rows(payload)
    assert [(r["group"], r["component"]) for r in rows][:4] == [
        ("fine", "encoder"), ("fine", "llm"), ("coarse", "encoder"), ("coarse", "llm")]
    assert Path(payload["figure"]).stat().st_size > 1000
    view = view_for("attribute")
    assert view.draw is not None and view.draw(payload, tmp_path)[0].is_file()
    missing = CliRunner().invoke(app, base)
    assert missing.exit_code == 2 and "no components known for ['m1', 'm2', 'm3']" in missing.output
