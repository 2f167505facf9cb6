"""What the paper's code reads: its seed-1234 subset of a manifest, and its Caltech-101 and
Flowers-102 splits (from its released manifests, or built from the standard layouts)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import make_caltech_tree, make_flowers_tree
from PIL import Image
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.data import load_dataset
from vlmclf.run.runner import select_examples
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


# ---------------------------------------------------------------- the paper's splits


def test_flowers_paper_splits_from_the_layout_and_from_the_papers_manifest(tmp_path):
    labels = [1, 102, 5, 5, 2, 1, 7, 7]
    make_flowers_tree(tmp_path, labels, trnid=[6, 1], valid=[3, 2], tstid=[8, 4, 5, 7])
    train = load_dataset("flowers102:paper_train", data_root=str(tmp_path))
    test = load_dataset("flowers102:paper_test", data_root=str(tmp_path))
    names = train.class_names
    assert [e.id for e in train.examples] == [f"image_{n:05d}.jpg" for n in (1, 2, 3, 6)]
    assert [e.id for e in test.examples] == [f"image_{n:05d}.jpg" for n in (4, 5, 7, 8)]
    assert [names[e.label] for e in train.examples] == [
        names[labels[n - 1] - 1] for n in (1, 2, 3, 6)
    ]
    assert {e.split for e in train.examples} == {"paper_train"}
    assert (
        len(load_dataset("flowers102:train", data_root=str(tmp_path))) == 2
    )  # official: unchanged
    # The paper's released file, one line per image in its own path layout.
    rows = [
        {"image": f"./data/Flowers102/jpg/image_{n:05d}.jpg", "label": names[labels[n - 1] - 1],
         "split": "test" if n in (4, 5) else "train"}
        for n in range(1, 7)
    ]  # fmt: skip
    (tmp_path / "flowers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_manifest = load_dataset("flowers102:paper_test", data_root=str(tmp_path))
    assert [e.id for e in from_manifest.examples] == ["image_00004.jpg", "image_00005.jpg"]
    assert [e.label for e in from_manifest.examples] == [labels[3] - 1, labels[4] - 1]
    assert from_manifest.examples[0].load().size  # resolved to the real file
    (tmp_path / "flowers.jsonl").write_text(json.dumps({**rows[0], "label": "weed"}) + "\n")
    with pytest.raises(ValueError, match="flowers.jsonl line 1: label 'weed'"):
        load_dataset("flowers102:paper_train", data_root=str(tmp_path))


def test_caltech_paper_splits_built_from_the_layout(tmp_path):
    base = tmp_path / "101_ObjectCategories"
    folders = {"BACKGROUND_Google": 4, "Faces": 5, "Faces_easy": 3, "car_side": 6, "yin_yang": 1}
    make_caltech_tree(base, folders)
    train = load_dataset("caltech101:paper_train", data_root=str(tmp_path))
    test = load_dataset("caltech101:paper_test", data_root=str(tmp_path))
    names = train.class_names
    train_ids, test_ids = {e.id for e in train.examples}, {e.id for e in test.examples}
    every = {f"{f}/image_{i:04d}.jpg" for f, n in folders.items() if f != "BACKGROUND_Google"
             for i in range(1, n + 1)}  # fmt: skip
    assert train_ids | test_ids == every and not train_ids & test_ids
    for folder, n in folders.items():
        if folder == "BACKGROUND_Google":
            continue
        assert sum(i.startswith(f"{folder}/") for i in train_ids) == (n + 1) // 2
    faces = {names[e.label] for e in [*train.examples, *test.examples] if "Faces" in e.id}
    assert faces == {"face"}  # both face folders, one name (as in the paper's manifest)
    again = load_dataset("caltech101:paper_train", data_root=str(tmp_path))
    assert [e.id for e in again.examples] == [e.id for e in train.examples]  # deterministic
    shuffled = [e.id for e in train.examples if e.id.startswith("car_side/")]
    assert shuffled != sorted(shuffled) or len(shuffled) < 3
    assert len(load_dataset("caltech101", data_root=str(tmp_path))) == 5 + 6 + 1  # unchanged


def test_caltech_paper_splits_read_from_the_papers_manifest(tmp_path):
    base = tmp_path / "101_ObjectCategories"
    make_caltech_tree(base, {"Faces": 2, "Faces_easy": 1, "car_side": 3})
    prefix = "./data/Caltech101/101_ObjectCategories"
    rows = [
        (f"{prefix}/car_side/image_0003.jpg", "car side", "train"),
        (f"{prefix}/Faces_easy/image_0001.jpg", "face", "test"),
        (f"{prefix}/car_side/image_0001.jpg", "car side", "test"),
        (f"{prefix}/Faces/image_0002.jpg", "face", "train"),
    ]
    lines = [json.dumps({"image": i, "label": label, "split": s}) for i, label, s in rows]
    (tmp_path / "caltech.jsonl").write_text("\n".join(lines) + "\n")
    test = load_dataset("caltech101:paper_test", data_root=str(tmp_path))
    assert [e.id for e in test.examples] == ["Faces_easy/image_0001.jpg", "car_side/image_0001.jpg"]
    assert [test.class_names[e.label] for e in test.examples] == ["face", "car side"]
    train = load_dataset("caltech101:paper_train", data_root=str(tmp_path))
    assert [e.id for e in train.examples] == ["car_side/image_0003.jpg", "Faces/image_0002.jpg"]
    assert all(e.load().size for e in train.examples)
    with pytest.raises(ValueError, match="paper_train"):
        load_dataset("caltech101:train", data_root=str(tmp_path))
