"""What the paper's code reads: its seed-1234 subset of a manifest, and its Caltech-101 and
Flowers-102 splits (from its released manifests, or built from the standard layouts)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.data import load_dataset
from vlmclf.runner import select_examples
from vlmclf.store import RunStore

NAMES = ["apple", "banana", "cherry"]


def write_manifest(path: Path, n_test: int, n_train: int) -> Path:
    """Test and train lines interleaved, labels cycling; images are never opened here."""
    lines = []
    for i in range(n_test + n_train):
        split = "test" if i % (n_test + n_train) < n_test and i % 5 != 4 else "train"
        lines.append({"image": f"img/{i:05d}.jpg", "label": NAMES[i % 3], "split": split})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_paper_subset_is_pythons_seed_1234_shuffle_of_the_manifest(tmp_path):
    manifest = write_manifest(tmp_path / "data.jsonl", 1500, 300)
    dataset = load_dataset(f"{manifest}:test")
    got = [e.id for e in select_examples(dataset, 1000, "paper")]
    # The paper's inference_analysis/main.py, on the raw lines.
    data = [json.loads(line) for line in manifest.read_text().splitlines()]
    data = [item for item in data if item["split"] == "test"]
    random.seed(1234)
    random.shuffle(data)
    data = data[:1000]
    assert got == [item["image"] for item in data]
    assert len(set(got)) == 1000 and len(dataset.examples) > 1000
    everything = [e.id for e in select_examples(dataset, None, "paper")]
    assert everything[:1000] == got and sorted(everything) == sorted(e.id for e in dataset.examples)
    default = [e.id for e in select_examples(dataset, 1000)]
    assert set(default) != set(got)  # the two selections really differ
    with pytest.raises(ValueError, match="--sample"):
        select_examples(dataset, 10, "first")


def test_eval_sample_paper_scores_that_subset(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            tmp_path / "img" / f"{i}.png"
        )
        lines.append({"image": f"img/{i}.png", "label": NAMES[i % 3], "split": "test"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    store = tmp_path / "runs.sqlite"
    args = ["eval", "--model", "random:clip", "--method", "clip", "--dataset", str(manifest),
            "--limit", "5", "--sample", "paper",
            "--store", str(store), "--json", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout.strip().splitlines()[-1])["run_id"]
    with RunStore(store) as opened:
        scored = {p.example_id for p in opened.predictions(run_id)}
    random.seed(1234)
    random.shuffle(lines)
    assert scored == {line["image"] for line in lines[:5]}
    bad = CliRunner().invoke(app, [*args[:-6], "--sample", "first", "--store", str(store)])
    assert bad.exit_code != 0 and "--sample" in bad.output
