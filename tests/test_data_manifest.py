"""JSONL manifests: reading, error messages, and write_manifest round trips for every layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import (
    make_caltech_tree,
    make_cars_tree,
    make_fashion_tree,
    make_flowers_tree,
    make_imagenet_tree,
    make_wnids,
    save_image,
)

from vlmclf.data import BadExampleError, Dataset, load_dataset, write_manifest


def write_lines(path: Path, records: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    save_image(tmp_path / "img" / "a.jpg", 1)
    save_image(tmp_path / "img" / "b.png", 2)
    save_image(tmp_path / "img" / "c.jpg", 3)
    return write_lines(
        tmp_path / "set.jsonl",
        [
            {"image": "img/b.png", "label": "dog", "split": "train"},
            {"image": "img/a.jpg", "label": "cat", "split": "test"},
            "",
            {"image": str(tmp_path / "img" / "c.jpg"), "label": "dog", "split": "test"},
        ],
    )


def test_manifest_reads_all_lines_in_order(manifest: Path) -> None:
    dataset = load_dataset(str(manifest))
    assert dataset.name == "set" and dataset.split == "all"
    assert dataset.class_names == ["cat", "dog"]
    assert [(e.id, e.label, e.split) for e in dataset.examples] == [
        ("img/b.png", 1, "train"),
        ("img/a.jpg", 0, "test"),
        (str(manifest.parent / "img" / "c.jpg"), 1, "test"),
    ]
    assert dataset.examples[0].source == str(manifest.parent / "img" / "b.png")
    assert dataset.examples[0].load().size == (8, 6)


def test_manifest_split_filter_keeps_the_class_list(manifest: Path) -> None:
    test = load_dataset(str(manifest), split="test")
    assert [e.id for e in test.examples][0] == "img/a.jpg" and len(test) == 2
    train = load_dataset(f"{manifest}:train", split="test")
    assert train.split == "train" and [e.label for e in train.examples] == [1]
    assert train.class_names == ["cat", "dog"]
    with pytest.raises(
        ValueError, match=r"no lines with split 'val' \(splits present: \['test', 'train'\]"
    ):
        load_dataset(str(manifest), split="val")


def test_manifest_data_root_and_class_list(manifest: Path, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    moved = load_dataset(str(manifest), data_root=str(tmp_path / "other"))
    assert moved.examples[0].id == "img/b.png"
    with pytest.raises(BadExampleError, match="missing file"):
        moved.examples[0].load()
    (tmp_path / "classes.json").write_text(json.dumps(["bird", "cat", "dog"]))
    listed = load_dataset(str(manifest), classes=str(tmp_path / "classes.json"))
    assert [e.label for e in listed.examples] == [2, 1, 2]
    assert listed.class_names == ["bird", "cat", "dog"]


def test_manifest_with_shipped_class_list(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "m.jsonl",
        [{"image": "x.jpg", "label": "missile"}, {"image": "y.jpg", "label": "tench"}],
    )
    dataset = load_dataset(str(path), classes="imagenet")
    assert [e.label for e in dataset.examples] == [657, 0]
    assert {e.split for e in dataset.examples} == {"all"}
    with pytest.raises(
        ValueError, match=r"split 'test' \(splits present: \['\(no split field\)'\]"
    ):
        load_dataset(str(path), split="test", classes="imagenet")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: invalid JSON"),
        ('["a", "b"]', "line 2: expected a JSON object"),
        ('{"label": "cat"}', "line 2: missing field 'image'"),
        ('{"image": "a.jpg"}', "line 2: missing field 'label'"),
        ('{"image": "a.jpg", "label": 3}', "line 2: field 'label' must be a non-empty string"),
        ('{"image": "a.jpg", "label": "cat", "split": 1}', "line 2: field 'split'"),
        ('{"image": "x.jpg", "label": "cat"}', "line 2: image 'x.jpg' already listed at line 1"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [{"image": "x.jpg", "label": "cat"}, line])
    with pytest.raises(ValueError, match=message) as info:
        load_dataset(str(path))
    assert str(path) in str(info.value)


def test_manifest_label_not_in_class_list(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "m.jsonl",
        [{"image": "x.jpg", "label": "tench"}, {"image": "y.jpg", "label": "gryphon"}],
    )
    with pytest.raises(ValueError, match="m.jsonl line 2: label 'gryphon' is not in class list"):
        load_dataset(str(path), classes="imagenet")


def test_missing_or_empty_manifest(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(str(tmp_path / "none.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="no examples"):
        load_dataset(str(tmp_path / "empty.jsonl"))


# ---------------------------------------------------------------- write_manifest round trips


def label_names(dataset: Dataset) -> list[str]:
    return [dataset.class_names[e.label] for e in dataset.examples]


def assert_round_trip(layout: str, root: Path, out: Path, split: str | None = None) -> Dataset:
    original = load_dataset(layout, data_root=str(root), split=split)
    count = write_manifest(layout, str(root), str(out), split)
    assert count == len(original) > 0
    back = load_dataset(str(out))
    assert label_names(back) == label_names(original)
    assert [e.split for e in back.examples] == [e.split for e in original.examples]
    for first, second in zip(original.examples, back.examples, strict=True):
        assert first.load().tobytes() == second.load().tobytes()
    return back


def test_round_trip_imagenet(tmp_path: Path) -> None:
    ordered = sorted(make_wnids())
    make_imagenet_tree(tmp_path / "in" / "val", ordered, {ordered[657]: 1, ordered[744]: 1})
    back = assert_round_trip("imagenet", tmp_path / "in", tmp_path / "out" / "in.jsonl")
    assert label_names(back) == ["missile", "missile"]
    as_imagenet = load_dataset(str(tmp_path / "out" / "in.jsonl"), classes="imagenet")
    assert [e.label for e in as_imagenet.examples] == [657, 657]
    first = json.loads((tmp_path / "out" / "in.jsonl").read_text().splitlines()[0])
    assert Path(first["image"]).is_absolute()  # the images are not under the manifest folder


def test_round_trip_flowers_with_relative_paths(tmp_path: Path) -> None:
    make_flowers_tree(tmp_path, [3, 1, 2, 2], trnid=[1], valid=[2], tstid=[4, 3])
    back = assert_round_trip("flowers102", tmp_path, tmp_path / "flowers.jsonl")
    assert [e.id for e in back.examples] == ["jpg/image_00004.jpg", "jpg/image_00003.jpg"]
    assert_round_trip("flowers102", tmp_path, tmp_path / "train.jsonl", split="train")


def test_round_trip_cars_and_caltech(tmp_path: Path) -> None:
    make_cars_tree(tmp_path / "cars", [("00001.jpg", 5)], [("00001.jpg", 9), ("00002.jpg", 1)])
    assert_round_trip("stanford_cars", tmp_path / "cars", tmp_path / "cars.jsonl")
    assert_round_trip("stanford_cars", tmp_path / "cars", tmp_path / "cars_tr.jsonl", "train")
    make_caltech_tree(
        tmp_path / "cal" / "101_ObjectCategories", {"Leopards": 2, "ant": 1, "Faces_easy": 1}
    )
    back = assert_round_trip("caltech101", tmp_path / "cal", tmp_path / "cal.jsonl")
    assert label_names(back) == ["leopard", "leopard", "ant"]


def test_round_trip_imagefolder(tmp_path: Path) -> None:
    for name in ("b/1.png", "a/2.jpg", "a/1.jpg"):
        save_image(tmp_path / "folder" / name, 4)
    back = assert_round_trip("imagefolder", tmp_path / "folder", tmp_path / "folder" / "m.jsonl")
    assert [e.id for e in back.examples] == ["a/1.jpg", "a/2.jpg", "b/1.png"]


def test_round_trip_fashion_mnist_writes_pngs(tmp_path: Path) -> None:
    written = make_fashion_tree(tmp_path / "idx", n_test=4)
    out = tmp_path / "out" / "fm.jsonl"
    back = assert_round_trip("fashion_mnist", tmp_path / "idx", out)
    assert [e.id for e in back.examples][0] == "fm_images/test/00000.png"
    assert (tmp_path / "out" / "fm_images" / "test" / "00003.png").is_file()
    gray = np.asarray(back.examples[1].load())[:, :, 0]
    assert np.array_equal(gray, written["test"][0][1])


def test_write_manifest_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown layout"):
        write_manifest("mnist", str(tmp_path), str(tmp_path / "x.jsonl"))
