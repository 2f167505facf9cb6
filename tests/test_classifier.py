"""--method classifier: supervised heads (random:resnet, random:vit, hf: *ForImageClassification)
mapped onto a run's class list, scored, stored, and read back as top-1/top-5, all offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import make_fashion_tree
from PIL import Image
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.data.classnames import load_class_names
from vlmclf.data.types import Example
from vlmclf.methods import make_method
from vlmclf.methods.base import LoadedExample
from vlmclf.models import load_model
from vlmclf.models.image_classifier import (
    HFImageClassifier,
    build_random_classifier,
    class_log_probs,
    label_columns,
    random_classifier_labels,
)
from vlmclf.spec import RunSpec

FASHION = load_class_names("fashion_mnist")


def spec(model: str, **fields) -> RunSpec:
    return RunSpec(model=model, dataset="mem", method="classifier", **fields)


def images(count: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 56, 3), (28, 28), (70, 30, 3)]
    return [
        Image.fromarray(rng.integers(0, 256, sizes[i % 3], dtype=np.uint8)) for i in range(count)
    ]


def batch_of(pictures: list[Image.Image]) -> list[LoadedExample]:
    return [
        LoadedExample(Example(f"ex{i}", i % len(FASHION), "test", f"mem:{i}", lambda: None), image)
        for i, image in enumerate(pictures)
    ]


def test_imagenet_head_maps_by_index_onto_our_imagenet_list():
    ours = load_class_names("imagenet")
    hf_style = [f"synset {i}, other name" for i in range(1000)]
    assert label_columns(hf_style, ours, ours) == [[i] for i in range(1000)]


def test_other_heads_map_by_name_case_and_synonyms_aside():
    labels = ["tench, Tinca tinca", "Golden_Retriever", "ankle  boot", "bag"]
    columns = label_columns(labels, ["Tinca tinca", "golden retriever", "Ankle boot"])
    assert columns == [[0], [1], [2]]
    # a 1000-way head onto a list that is not ours maps by name, not by index
    thousand = [f"name {i}" for i in range(1000)]
    assert label_columns(thousand, ["name 7"], load_class_names("imagenet")) == [[7]]


def test_unmapped_classes_are_listed_in_one_error():
    with pytest.raises(ValueError, match=r"2 of the run's 3 classes .*'Trouser', 'Coat'"):
        label_columns(["T-shirt/top", "Dress"], ["T-shirt/top", "Trouser", "Coat"])


def test_class_log_probs_sums_probabilities_of_shared_outputs():
    log_probs = torch.log_softmax(torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]), dim=-1)
    got = class_log_probs(log_probs, [[2], [0, 1]])
    probs = log_probs.exp()
    want = torch.stack([probs[:, 2], probs[:, 0] + probs[:, 1]], dim=1).log()
    torch.testing.assert_close(got, want)


def test_random_labels_cover_every_shipped_list_with_imagenet_first():
    labels = random_classifier_labels()
    assert labels[:1000] == load_class_names("imagenet")
    for name in ("fashion_mnist", "flowers102", "caltech101", "stanford_cars"):
        label_columns(labels, load_class_names(name))  # no error: every name maps


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_random_classifier_is_tiny_deterministic_and_scores_like_a_manual_forward(family):
    model = load_model(f"random:{family}", seed=0)
    assert isinstance(model, HFImageClassifier) and model.name == f"random:{family}"
    raw, _ = build_random_classifier(family, seed=0)
    assert sum(p.numel() for p in raw.parameters()) < 300_000
    other, _ = build_random_classifier(family, seed=1)
    assert any(
        not torch.equal(a, b) for a, b in zip(raw.parameters(), other.parameters(), strict=True)
    )

    pictures = images()
    method = make_method(model, FASHION, spec(f"random:{family}"))
    predictions = method.predict(batch_of(pictures))
    for picture, prediction in zip(pictures, predictions, strict=True):
        pixels = model.image_processor(images=[picture.convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            logits = raw(pixel_values=pixels["pixel_values"]).logits[0].double()
        full = torch.log_softmax(logits, dim=-1)
        lowered = [label.lower() for label in model.labels]  # "sandal" is ImageNet's
        want = [float(full[lowered.index(name.lower())]) for name in FASHION]
        assert prediction.scores == pytest.approx(want, abs=1e-5)
        assert prediction.pred == int(np.argmax(want))
        assert prediction.hit == (prediction.pred == prediction.label)


def test_k_restricts_the_scored_classes():
    model = load_model("random:resnet")
    method = make_method(model, FASHION, spec("random:resnet", k=3, order="random"))
    for prediction in method.predict(batch_of(images())):
        assert len(prediction.choices) == 3 and prediction.label in prediction.choices
        scored = [i for i, s in enumerate(prediction.scores) if s is not None]
        assert scored == sorted(prediction.choices) and prediction.pred in prediction.choices


def test_saved_classifier_loads_back_through_hf(tmp_path: Path):
    model, processor = build_random_classifier("vit", seed=0)
    model.save_pretrained(tmp_path / "vit")
    processor.save_pretrained(tmp_path / "vit")
    reloaded = load_model(f"hf:{tmp_path / 'vit'}")
    original = load_model("random:vit")
    assert isinstance(reloaded, HFImageClassifier) and reloaded.labels == original.labels
    torch.testing.assert_close(reloaded.log_probs(images()), original.log_probs(images()))


def test_methods_and_models_that_do_not_fit_are_refused():
    classifier = load_model("random:resnet")
    with pytest.raises(ValueError, match="is a supervised image classifier .*--method classifier"):
        make_method(classifier, FASHION, RunSpec(model="random:resnet", dataset="m", method="clip"))
    vlm = load_model("random:llava")
    with pytest.raises(ValueError, match="needs a supervised image classifier.*generative model"):
        make_method(vlm, FASHION, spec("random:llava"))


def test_eval_cli_runs_a_classifier_and_reports_top5(tmp_path: Path):
    make_fashion_tree(tmp_path / "idx", n_test=12)
    args = [
        "eval", "--model", "random:resnet", "--dataset", "fashion_mnist", "--method",
        "classifier", "--data-root", str(tmp_path / "idx"), "--store", str(tmp_path / "r.sqlite"),
        "--limit", "10", "--json", "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 10 and summary["n_scored"] == 10 and summary["n_failed"] == 0
    assert summary["top5"] is not None and summary["top5"] >= summary["accuracy"]
    closed = CliRunner().invoke(app, [*args[:-2], "--setting", "closed", "--json"])
    assert closed.exit_code != 0 and "classifiers use --k" in closed.output
