"""End to end: ``vlmclf eval --method likelihood`` on Fashion-MNIST with three VLM families, and
``bench/scoring.py`` (agreement of the three ways, its JSON, and on ImageNet its speed-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.data.classnames import load_class_names
from vlmclf.store import RunStore

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
BENCH = Path(__file__).resolve().parents[1] / "bench" / "scoring.py"


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("family", ["llava", "blip2", "qwen2_vl"])
def test_eval_likelihood_on_fashion_mnist(family, tmp_path):
    store = tmp_path / "runs.sqlite"
    args = [
        "eval", "--model", f"random:{family}", "--dataset", "fashion_mnist",
        "--method", "likelihood", "--limit", "5", "--batch-size", "3", "--store", str(store),
        "--json", "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 5 and summary["n_ok"] == 5
    assert summary["top5"] >= summary["strict_accuracy"]
    names = load_class_names("fashion_mnist")
    with RunStore(store) as runs:
        predictions = list(runs.predictions(summary["run_id"]))
    assert len(predictions) == 5
    for p in predictions:
        logprobs = p.extra["token_logprobs"]
        assert set(logprobs) == set(names)
        assert p.scores == pytest.approx([sum(logprobs[n]) for n in names], abs=1e-9)
        assert p.pred == max(range(len(names)), key=lambda i: p.scores[i])


def run_bench(*args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, str(BENCH), *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bench_agrees_and_reports_json(tmp_path):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(load_class_names("imagenet")[:120]))
    result = run_bench(
        "--model", "random:blip2", "--classes", str(classes), "--images", "1", "--sample", "12"
    )
    assert {"speedup_vs_paper", "speedup_vs_full", "max_abs_diff_nats", "s_per_image"} <= set(
        result
    )
    assert set(result["s_per_image"]) == {"ours", "paper", "full"}
    assert result["max_abs_diff_nats"] <= 1e-3
    assert result["extrapolated"] and result["sampled_classes"] == 12
    assert result["distinct_names"] == 120 and result["trie_nodes"] < result["class_tokens"]


@pytest.mark.slow
def test_bench_imagenet_speedup_on_cpu():
    result = run_bench("--model", "random:llava", "--classes", "imagenet")
    assert result["max_abs_diff_nats"] <= 1e-3
    assert result["speedup_vs_paper"] >= 10
