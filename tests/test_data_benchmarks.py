"""The fine-grained and robustness benchmark layouts, read from miniature copies of their
official releases (real .txt lists, .mat files, pickle batches, folders) written by the tests."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fixtures_benchmarks import (
    build_cifar10,
    build_cifar100,
    build_cub200,
    build_dtd,
    build_fgvc_aircraft,
    build_food101,
    build_oxford_pets,
    build_stanford_dogs,
    build_sun397,
    build_wnid_folders,
    write_cifar_batch,
    write_image,
)
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.data import LAYOUTS, load_class_names, load_dataset, write_manifest
from vlmclf.data.catalog import BENCHMARK_LAYOUTS, CATALOG
from vlmclf.data.layouts_robustness import shipped_wnids
from vlmclf.data.types import Dataset
from vlmclf.run.identity import examples_fingerprint
from vlmclf.store import RunStore

FILE_LAYOUTS: dict[str, tuple[Callable[[Path], dict], str]] = {
    "oxford_pets": (build_oxford_pets, "trainval"),
    "cub200": (build_cub200, "train"),
    "food101": (build_food101, "train"),
    "stanford_dogs": (build_stanford_dogs, "train"),
    "dtd": (build_dtd, "train1"),
    "sun397": (build_sun397, "train1"),
}


def pairs(dataset: Dataset) -> list[tuple[str, int]]:
    return [(e.id, e.label) for e in dataset.examples]


@pytest.mark.parametrize("name", sorted(FILE_LAYOUTS))
def test_file_list_layouts_read_the_official_lists(name: str, tmp_path: Path) -> None:
    build, other_split = FILE_LAYOUTS[name]
    expected = build(tmp_path)
    default = load_dataset(name, data_root=str(tmp_path))
    assert default.split == BENCHMARK_LAYOUTS[name].default_split
    assert pairs(default) == expected[default.split]
    assert pairs(load_dataset(f"{name}:{other_split}", data_root=str(tmp_path))) == expected[
        other_split
    ]
    assert default.class_names == load_class_names(name)
    assert len(default.class_names) == BENCHMARK_LAYOUTS[name].classes
    image = default.examples[0].load()
    assert image.mode == "RGB" and image.size == (20, 16)
    assert all(Path(e.source).is_file() for e in default.examples)


def test_fgvc_aircraft_three_levels_label_the_same_images(tmp_path: Path) -> None:
    expected = build_fgvc_aircraft(tmp_path)
    for layout, level in (
        ("fgvc_aircraft", "variant"),
        ("fgvc_aircraft_family", "family"),
        ("fgvc_aircraft_manufacturer", "manufacturer"),
    ):
        test = load_dataset(layout, data_root=str(tmp_path))
        assert test.split == "test" and pairs(test) == expected[level]["test"]
        train = load_dataset(f"{layout}:train", data_root=str(tmp_path))
        assert pairs(train) == expected[level]["train"]
        assert len(test.class_names) == {"variant": 100, "family": 70, "manufacturer": 30}[level]
    boeing = load_dataset("fgvc_aircraft_manufacturer", data_root=str(tmp_path))
    assert boeing.class_names[boeing.examples[0].label] == "Boeing"
    assert load_dataset("fgvc_aircraft", data_root=str(tmp_path)).examples[0].load().size == (
        30,
        20,
    )


def test_fgvc_aircraft_unknown_label_names_file_and_line(tmp_path: Path) -> None:
    build_fgvc_aircraft(tmp_path)
    listing = tmp_path / "fgvc-aircraft-2013b" / "data" / "images_family_test.txt"
    listing.write_text("0034309 Boeing 707\n0056978 Concorde\n")
    with pytest.raises(ValueError, match=r"images_family_test.txt line 2: family 'Concorde'"):
        load_dataset("fgvc_aircraft_family", data_root=str(tmp_path))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickle_batches_decode_to_the_array_pixels(name: str, tmp_path: Path) -> None:
    expected = (build_cifar10 if name == "cifar10" else build_cifar100)(tmp_path)
    for split in ("train", "test"):
        dataset = load_dataset(f"{name}:{split}", data_root=str(tmp_path))
        data, labels = expected[split]
        assert [e.label for e in dataset.examples] == labels
        assert [e.id for e in dataset.examples] == [f"{split}/{i:05d}" for i in range(len(labels))]
        for row, example in enumerate(dataset.examples):
            pixels = np.asarray(example.load())
            # channel planes: red = first 1024 values, row-major
            assert pixels[0, 0, 0] == data[row, 0] and pixels[0, 1, 0] == data[row, 1]
            assert pixels[1, 0, 1] == data[row, 1024 + 32] and pixels[31, 31, 2] == data[row, -1]
    assert load_dataset(name, data_root=str(tmp_path)).split == "test"


def test_cifar_unpickler_refuses_anything_but_arrays(tmp_path: Path) -> None:
    class Sneaky:
        def __reduce__(self) -> tuple:
            return (print, ("ran code",))

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    (base / "test_batch").write_bytes(pickle.dumps({b"data": Sneaky(), b"labels": [0]}))
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR python batch .*builtins.print"):
        load_dataset("cifar10", data_root=str(tmp_path))


def test_cifar_bad_batch_shape_and_labels(tmp_path: Path) -> None:
    batch = tmp_path / "test_batch"
    write_cifar_batch(batch, np.zeros((2, 100), np.uint8), [0, 1], b"labels")
    with pytest.raises(ValueError, match="N x 3072 uint8"):
        load_dataset("cifar10", data_root=str(tmp_path))
    write_cifar_batch(batch, np.zeros((2, 3072), np.uint8), [0, 10], b"labels")
    with pytest.raises(ValueError, match=r"labels outside 0..9"):
        load_dataset("cifar10", data_root=str(tmp_path))


def test_imagenet_r_and_a_are_200_way_with_imagenet_names(tmp_path: Path) -> None:
    imagenet, all_wnids = load_class_names("imagenet"), shipped_wnids("imagenet")
    for name, folder in (("imagenet_r", "imagenet-r"), ("imagenet_a", "imagenet-a")):
        wnids = shipped_wnids(name)
        chosen = [wnids[0], wnids[57], wnids[199]]
        ids = build_wnid_folders(tmp_path / name / folder, chosen)
        dataset = load_dataset(name, data_root=str(tmp_path / name))
        assert len(dataset.class_names) == 200 and [e.id for e in dataset.examples] == ids
        assert [e.label for e in dataset.examples] == [0, 0, 57, 57, 199, 199]
        # independent: the name ImageNet gives that synset
        for example in dataset.examples:
            wnid = example.id.split("/")[0]
            assert dataset.class_names[example.label] == imagenet[all_wnids.index(wnid)]
    assert shipped_wnids("imagenet_r") != shipped_wnids("imagenet_a")
    assert "n01443537" in shipped_wnids("imagenet_r")  # goldfish is in R


def test_imagenet_sketch_and_v2_use_the_1000_classes(tmp_path: Path) -> None:
    wnids = shipped_wnids("imagenet")
    build_wnid_folders(tmp_path / "sk" / "sketch", [wnids[1], wnids[999]], per_class=1)
    sketch = load_dataset("imagenet_sketch", data_root=str(tmp_path / "sk"))
    assert [e.label for e in sketch.examples] == [1, 999] and len(sketch.class_names) == 1000
    v2 = tmp_path / "v2" / "imagenetv2-matched-frequency-format-val"
    for index in (0, 7, 999):
        write_image(v2 / str(index) / f"{index}abc.jpeg", index)
    dataset = load_dataset("imagenet_v2", data_root=str(tmp_path / "v2"))
    assert dataset.split == "matched-frequency"
    assert [(e.id, e.label) for e in dataset.examples] == [
        ("0/0abc.jpeg", 0), ("7/7abc.jpeg", 7), ("999/999abc.jpeg", 999),
    ]  # fmt: skip
    write_image(v2 / "1000" / "x.jpeg", 1)
    with pytest.raises(ValueError, match=r"expected class folders 0..999 .*'1000'"):
        load_dataset("imagenet_v2", data_root=str(tmp_path / "v2"))


def test_stanford_dogs_names_are_imagenets_for_its_synsets() -> None:
    imagenet, all_wnids = load_class_names("imagenet"), shipped_wnids("imagenet")
    dogs = shipped_wnids("stanford_dogs")
    assert len(dogs) == 120 and list(dogs) == sorted(dogs)
    assert load_class_names("stanford_dogs") == [imagenet[all_wnids.index(w)] for w in dogs]


MISSING = [  # layout, builder, file removed, text the error must name
    ("oxford_pets", build_oxford_pets, "oxford-iiit-pet/annotations/test.txt", "test.txt"),
    ("cub200", build_cub200, "CUB_200_2011/train_test_split.txt", "train_test_split.txt"),
    ("cub200", build_cub200, "CUB_200_2011/image_class_labels.txt", "image_class_labels.txt"),
    ("cub200", build_cub200, "CUB_200_2011/classes.txt", "classes.txt"),
    ("food101", build_food101, "food-101/meta/classes.txt", "meta/classes.txt"),
    ("food101", build_food101, "food-101/meta/test.txt", "meta/test.txt"),
    ("stanford_dogs", build_stanford_dogs, "test_list.mat", "test_list.mat"),
    ("dtd", build_dtd, "dtd/labels/test1.txt", "labels/test1.txt"),
    ("sun397", build_sun397, "Partitions/Testing_01.txt", "Testing_01.txt"),
    ("sun397", build_sun397, "SUN397/ClassName.txt", "ClassName.txt"),
    ("cifar10", build_cifar10, "cifar-10-batches-py/test_batch", "test_batch"),
    ("cifar100", build_cifar100, "cifar-100-python/test", "cifar-100-python/test"),
    ("fgvc_aircraft", build_fgvc_aircraft, "fgvc-aircraft-2013b/data/images_variant_test.txt",
     "images_variant_test.txt"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "build", "removed", "named"), MISSING)
def test_missing_file_is_a_one_line_error_naming_it(
    name: str, build: Callable[[Path], object], removed: str, named: str, tmp_path: Path
) -> None:
    build(tmp_path)
    (tmp_path / removed).unlink()
    with pytest.raises(ValueError) as caught:
        load_dataset(name, data_root=str(tmp_path))
    message = str(caught.value)
    assert named in message and "does not exist" in message and "\n" not in message


def test_unknown_split_lists_the_splits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dtd: unknown split 'test'; use one of \['train1'"):
        load_dataset("dtd:test", data_root=str(tmp_path))
    with pytest.raises(ValueError, match="imagenet_r has one split, 'test'"):
        load_dataset("imagenet_r:val", data_root=str(tmp_path))


def test_cifar_identity_follows_the_batch_file(tmp_path: Path) -> None:
    build_cifar10(tmp_path)
    before = examples_fingerprint(load_dataset("cifar10", data_root=str(tmp_path)).examples)
    again = examples_fingerprint(load_dataset("cifar10", data_root=str(tmp_path)).examples)
    write_cifar_batch(
        tmp_path / "cifar-10-batches-py" / "test_batch",
        np.ones((3, 3072), np.uint8), [0, 9, 4], b"labels",
    )  # fmt: skip
    after = examples_fingerprint(load_dataset("cifar10", data_root=str(tmp_path)).examples)
    assert before == again != after


def test_cifar_manifest_writes_pngs_that_read_back(tmp_path: Path) -> None:
    build_cifar100(tmp_path / "data")
    out = tmp_path / "m" / "cifar100.jsonl"
    assert write_manifest("cifar100", str(tmp_path / "data"), str(out)) == 4
    back = load_dataset(str(out), classes="cifar100")
    original = load_dataset("cifar100", data_root=str(tmp_path / "data"))
    assert [e.label for e in back.examples] == [e.label for e in original.examples]
    assert np.array_equal(np.asarray(back.examples[2].load()), original.examples[2].load())


def test_catalog_covers_every_layout_with_the_shipped_class_counts() -> None:
    names = {entry.name for entry in CATALOG}
    assert set(LAYOUTS) <= names
    for entry in CATALOG:
        if entry.class_list is not None:
            assert len(load_class_names(entry.class_list)) == entry.classes, entry.name
    result = CliRunner().invoke(app, ["data", "list"])
    assert result.exit_code == 0, result.output
    for name in LAYOUTS:
        assert any(line.split()[0] == name for line in result.output.splitlines()), name
    assert "expects: images.txt, train_test_split.txt, image_class_labels.txt" in result.output
    rows = [
        json.loads(line)
        for line in CliRunner().invoke(app, ["data", "list", "--json"]).output.splitlines()
    ]
    assert {r["name"]: r["classes"] for r in rows}["imagenet_r"] == 200
    assert {r["name"]: r["default_split"] for r in rows}["sun397"] == "test1"


def eval_json(*args: str) -> dict:
    result = CliRunner().invoke(app, ["eval", *args, "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_eval_end_to_end_on_cifar10_and_imagenet_r(tmp_path: Path) -> None:
    """A tiny random CLIP scores every class: 10-way on CIFAR-10, 200-way on ImageNet-R."""
    build_cifar10(tmp_path / "cifar")
    wnids = shipped_wnids("imagenet_r")
    build_wnid_folders(tmp_path / "r" / "imagenet-r", [wnids[3], wnids[150]])
    store = tmp_path / "runs.sqlite"
    for dataset, root, n, ways in (
        ("cifar10", tmp_path / "cifar", 3, 10),
        ("imagenet_r", tmp_path / "r", 4, 200),
    ):
        summary = eval_json(
            "--model", "random:clip", "--method", "clip", "--dataset", dataset,
            "--data-root", str(root), "--store", str(store),
        )  # fmt: skip
        assert summary["n"] == n and summary["n_failed"] == 0
        with RunStore(store) as runs:
            predictions = runs.predictions(summary["run_id"])
        assert all(p.scores is not None and len(p.scores) == ways for p in predictions)
        want = [e.label for e in load_dataset(dataset, data_root=str(root)).examples]
        assert sorted(p.label for p in predictions) == sorted(want)


def test_eval_closed_generation_on_oxford_pets(tmp_path: Path) -> None:
    build_oxford_pets(tmp_path)
    summary = eval_json(
        "--model", "random:llava", "--method", "generate", "--setting", "closed", "--k", "3",
        "--max-new-tokens", "4", "--dataset", "oxford_pets:trainval", "--data-root",
        str(tmp_path), "--store", str(tmp_path / "s.sqlite"),
    )  # fmt: skip
    assert summary["n"] == 3 and summary["n_failed"] == 0
    with RunStore(tmp_path / "s.sqlite") as runs:
        predictions = runs.predictions(summary["run_id"])
    names = load_class_names("oxford_pets")
    assert {names[p.label] for p in predictions} == {
        "Abyssinian", "American Bulldog", "Yorkshire Terrier",
    }  # fmt: skip
    assert all(len(p.choices) == 3 and p.label in p.choices for p in predictions)


@pytest.mark.slow  # about 30 s: two ranks each import torch and transformers
def test_two_torchrun_ranks_store_what_one_process_stores_on_cifar(tmp_path: Path) -> None:
    """Rows of pickle batches shard like files: each rank decodes its own share of the rows."""
    from tests.test_distributed import json_lines, launch, stored_rows, torchrun

    base = tmp_path / "data" / "cifar-10-batches-py"
    write_cifar_batch(base / "test_batch", np.arange(9 * 3072).astype(np.uint8).reshape(9, 3072),
                      [i % 10 for i in range(9)], b"labels")  # fmt: skip
    args = ["eval", "--model", "random:clip", "--method", "clip", "--dataset", "cifar10",
            "--data-root", str(tmp_path / "data"), "--batch-size", "2", "--json",
            "--no-progress"]  # fmt: skip
    one = CliRunner().invoke(app, [*args, "--store", str(tmp_path / "one.sqlite")])
    assert one.exit_code == 0, one.output
    two = launch([*torchrun(2), "-m", "vlmclf", *args, "--store", str(tmp_path / "two.sqlite")])
    assert two.returncode == 0, two.stderr[-3000:]
    (printed,) = json_lines(two.stdout)
    assert printed["n"] == 9 and printed["run_id"] == json_lines(one.stdout)[-1]["run_id"]
    assert stored_rows(tmp_path / "two.sqlite") == stored_rows(tmp_path / "one.sqlite")
