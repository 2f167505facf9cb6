"""Scores recomputed from stored token log-probs, without the model: aggregates, guidance,
the dataset-mean calibration, and choosing the guidance weight on a validation split."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlmclf.data.types import Example
from vlmclf.methods.base import LoadedExample
from vlmclf.methods.likelihood.method import LikelihoodMethod, finalize_predictions
from vlmclf.methods.likelihood.scores import (
    aggregate,
    dataset_mean_prior,
    rescore,
    sweep_cfg,
    sweep_cfg_predictions,
)
from vlmclf.models import load_model
from vlmclf.records import Prediction
from vlmclf.spec import RunSpec

NAMES = ["cat", "dog", "cat", "great white shark"]


def stored(example_id: str, label: int, image: dict, prior: dict | None = None) -> Prediction:
    extra = {"token_logprobs": image, "agg": "sum"}
    if prior is not None:
        extra["image_free"] = prior
    return Prediction(example_id=example_id, label=label, extra=extra)


def test_aggregates():
    assert aggregate([-1.0, -2.0, -3.0], "sum") == -6.0
    assert aggregate([-1.0, -2.0, -3.0], "mean") == -2.0
    with pytest.raises(ValueError, match="agg"):
        aggregate([-1.0], "max")


def test_rescore_with_guidance_and_duplicates():
    image = {"cat": [-1.0], "dog": [-0.5], "great white shark": [-2.0, -0.1]}
    prior = {"cat": [-3.0], "dog": [-0.2], "great white shark": [-4.0, -1.0]}
    p = stored("a", 2, image, prior)
    plain = rescore([p], NAMES)[0]
    assert plain.scores == [-1.0, -0.5, -1.0, pytest.approx(-2.1)]
    assert plain.pred == 1 and plain.hit is False
    guided = rescore([p], NAMES, agg="sum", t=2.0)[0]
    # t * image + (1 - t) * prior: cat 2(-1) - (-3) = 1; dog -1 + 0.2 = -0.8; shark -4.2 + 5 = 0.8
    assert guided.scores == [
        pytest.approx(1.0),
        pytest.approx(-0.8),
        pytest.approx(1.0),
        pytest.approx(0.8),
    ]
    assert guided.pred == 0 and guided.hit is True  # label 2 is "cat" too: the first index wins
    mean = rescore([p], NAMES, agg="mean", t=1.0)[0]
    assert mean.scores[3] == pytest.approx(-1.05)
    with pytest.raises(ValueError, match="no image-free"):
        rescore([stored("b", 0, image)], NAMES, t=1.5)


def test_failed_predictions_pass_through():
    failed = Prediction.failed("x", 0, "bad image")
    assert rescore([failed], NAMES, t=2.0)[0] is failed


def test_dataset_mean_calibration_matches_the_original_formula():
    preds = [
        stored("a", 0, {"cat": [-1.0, -2.0], "dog": [-3.0]}),
        stored("b", 1, {"cat": [-3.0, -2.0], "dog": [-1.0]}),
        Prediction.failed("c", 0, "unreadable"),
    ]
    prior = dataset_mean_prior(preds)
    assert prior == {"cat": [-2.0, -2.0], "dog": [-2.0]}
    alpha = 3.0
    out = rescore(preds, ["cat", "dog"], t=alpha, prior="dataset_mean")
    for p, q in zip(preds[:2], out[:2], strict=True):
        for i, name in enumerate(["cat", "dog"]):
            want = sum(
                alpha * a + (1 - alpha) * m
                for a, m in zip(p.extra["token_logprobs"][name], prior[name], strict=True)
            )
            assert q.scores[i] == pytest.approx(want)
    spec = RunSpec(
        model="m",
        dataset="d",
        method="likelihood",
        options={"cfg": alpha, "calibration": "dataset_mean"},
    )
    final = finalize_predictions(preds, ["cat", "dog"], spec)
    assert [p.scores for p in final[:2]] == [p.scores for p in out[:2]]
    plain_spec = RunSpec(model="m", dataset="d", method="likelihood")
    assert finalize_predictions(preds, ["cat", "dog"], plain_spec) == preds


def test_sweep_picks_the_best_weight_and_breaks_ties_towards_one():
    # Two classes; the prior favours class 1 everywhere, the image favours the truth a little.
    labels = np.array([0, 0, 1, 0])
    image = np.array([[-1.0, -1.2], [-1.0, -1.1], [-2.0, -1.0], [-1.5, -1.6]])
    prior = np.array([-3.0, -0.5])
    assert sweep_cfg(image, prior, labels, grid=[0.0, 4.0, 1.0]) == 1.0  # 1/4, 3/4, 4/4 correct
    assert sweep_cfg(image, prior, labels, grid=[1.1, 1.0]) == 1.0  # both 4/4: the least guidance
    hard = np.array([[-1.0, -0.9], [-1.0, -0.95], [-2.0, -1.0], [-1.2, -1.1]])
    # t=1: 1/4 correct; t=3: 3 (-1) - 2 (-3) = 3 vs 3 (-0.9) - 2 (-0.5) = -1.7 -> class 0 wins
    assert sweep_cfg(hard, prior, labels, grid=[1.0, 3.0]) == 3.0
    with_nan = hard.copy()
    with_nan[:, 1] = np.nan  # class 1 never scored: class 0 always predicted
    assert sweep_cfg(with_nan, prior, labels, grid=[1.0]) == 1.0
    with pytest.raises(ValueError, match="labels"):
        sweep_cfg(image, prior, labels[:2])


@pytest.fixture(scope="module")
def llava():
    return load_model("random:llava", dtype="float32", seed=0)


def test_stored_predictions_rescore_like_a_fresh_run(llava):
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    names = ["cat", "cat food", "tench", "goldfish", "golden eagle"]
    batch = [
        LoadedExample(Example(f"e{i}", i, "val", "mem", lambda: None), im)
        for i, im in enumerate(images)
    ]

    def run(options: dict) -> list[Prediction]:
        spec = RunSpec(model="random:llava", dataset="mem", method="likelihood", options=options)
        return LikelihoodMethod(llava, names, spec).predict(batch)

    base = run({"cfg": 1.0})
    fresh = run({"cfg": 2.5, "agg": "mean"})
    again = rescore(base, names, agg="mean", t=2.5)
    for a, b in zip(again, fresh, strict=True):
        assert a.scores == pytest.approx(b.scores, abs=1e-9)
        assert (a.pred, a.hit) == (b.pred, b.hit)
    best = sweep_cfg_predictions(base, names, agg="sum", grid=[0.5, 1.0, 2.0])
    assert best in (0.5, 1.0, 2.0)
