"""Readers of the standard layouts, on small generated trees, and load_dataset's dispatch."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from fixtures_data import (
    CALTECH_FOLDERS,
    make_caltech_tree,
    make_cars_tree,
    make_fashion_tree,
    make_flowers_tree,
    make_imagenet_tree,
    make_wnids,
    save_image,
    write_idx,
)

from vlmclf.data import load_class_names, load_dataset
from vlmclf.data.idx import read_idx
from vlmclf.data.layouts import CALTECH_SKIPPED, caltech_class_name

# ---------------------------------------------------------------- ImageNet


@pytest.fixture
def imagenet_root(tmp_path: Path) -> tuple[Path, list[str]]:
    wnids = make_wnids()
    ordered = sorted(wnids)
    picked = {ordered[0]: 1, ordered[657]: 2, ordered[999]: 1}
    make_imagenet_tree(tmp_path / "val", wnids, picked)
    return tmp_path, ordered


def test_imagenet_labels_follow_sorted_wnids(imagenet_root: tuple[Path, list[str]]) -> None:
    root, ordered = imagenet_root
    dataset = load_dataset("imagenet", data_root=str(root))
    assert dataset.split == "val" and len(dataset.class_names) == 1000
    assert [e.label for e in dataset.examples] == [0, 657, 657, 999]
    assert dataset.examples[0].id == f"{ordered[0]}/ILSVRC2012_val_00000000.JPEG"
    assert dataset.class_names[657] == "missile"
    assert {e.split for e in dataset.examples} == {"val"}
    assert dataset.examples[1].load().mode == "RGB"
    # pointing at the split folder itself gives the same ids and labels
    direct = load_dataset("imagenet", data_root=str(root / "val"))
    assert [(e.id, e.label) for e in direct.examples] == [(e.id, e.label) for e in dataset.examples]


def test_imagenet_needs_all_folders_or_a_mapping(tmp_path: Path) -> None:
    wnids = make_wnids()
    ordered = sorted(wnids)
    make_imagenet_tree(tmp_path / "val", ordered[::2], {ordered[2]: 1, ordered[10]: 1})
    with pytest.raises(ValueError, match="found 500 wnid folders.*LOC_synset_mapping.txt"):
        load_dataset("imagenet", data_root=str(tmp_path))
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} some name, other name\n" for w in wnids)
    )
    dataset = load_dataset("imagenet", data_root=str(tmp_path))
    assert [e.label for e in dataset.examples] == [2, 10]


def test_imagenet_mapping_must_list_1000(tmp_path: Path) -> None:
    wnids = make_wnids()
    make_imagenet_tree(tmp_path / "val", wnids[:3], {})
    (tmp_path / "LOC_synset_mapping.txt").write_text("".join(f"{w} x\n" for w in wnids[:999]))
    with pytest.raises(ValueError, match="999 distinct wnids"):
        load_dataset("imagenet", data_root=str(tmp_path))


def test_imagenet_explicit_wnid_list(tmp_path: Path) -> None:
    from vlmclf.data.layouts import read_imagenet

    wnids = make_wnids()
    ordered = sorted(wnids)
    make_imagenet_tree(tmp_path, [ordered[42]], {ordered[42]: 1})
    assert [e.label for e in read_imagenet(tmp_path, wnids=wnids).examples] == [42]
    (tmp_path.parent / "wnids.txt").write_text("\n".join(wnids))
    read = read_imagenet(tmp_path, wnids=tmp_path.parent / "wnids.txt")
    assert [e.label for e in read.examples] == [42]
    with pytest.raises(ValueError, match="not in the list of ImageNet wnids"):
        read_imagenet(tmp_path, wnids=make_wnids(seed=1))


def test_imagenet_rejects_other_folders(tmp_path: Path) -> None:
    make_imagenet_tree(tmp_path / "val", make_wnids(), {})
    (tmp_path / "val" / "misc").mkdir()
    with pytest.raises(ValueError, match="WordNet id.*misc"):
        load_dataset("imagenet", data_root=str(tmp_path))
    with pytest.raises(ValueError, match="no folders|WordNet"):
        load_dataset("imagenet:train", data_root=str(tmp_path / "val" / "misc"))


# ---------------------------------------------------------------- Flowers-102


def test_flowers(tmp_path: Path) -> None:
    make_flowers_tree(tmp_path, [1, 102, 5, 5, 2, 1], trnid=[2, 1], valid=[3], tstid=[6, 4, 5])
    test = load_dataset("flowers102", data_root=str(tmp_path))
    assert test.split == "test"
    assert [(e.id, e.label) for e in test.examples] == [
        ("image_00006.jpg", 0),
        ("image_00004.jpg", 4),
        ("image_00005.jpg", 1),
    ]
    train = load_dataset("flowers102:train", data_root=str(tmp_path), split="test")
    assert [(e.id, e.label, e.split) for e in train.examples] == [
        ("image_00002.jpg", 101, "train"),
        ("image_00001.jpg", 0, "train"),
    ]
    assert load_dataset("flowers102", str(tmp_path), split="val").examples[0].label == 4
    assert test.class_names == load_class_names("flowers102")
    assert test.examples[0].load().size == (8, 6)


def test_flowers_torchvision_folder_and_errors(tmp_path: Path) -> None:
    make_flowers_tree(tmp_path / "flowers-102", [1, 2], trnid=[1], valid=[2], tstid=[9])
    with pytest.raises(ValueError, match=r"setid.mat: tstid has values outside 1..2"):
        load_dataset("flowers102", data_root=str(tmp_path))
    assert len(load_dataset("flowers102:train", data_root=str(tmp_path))) == 1
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_dataset("flowers102:dev", data_root=str(tmp_path))
    scipy.io.savemat(tmp_path / "flowers-102" / "imagelabels.mat", {"other": np.array([1])})
    with pytest.raises(ValueError, match="no variable 'labels'"):
        load_dataset("flowers102:train", data_root=str(tmp_path))
    make_flowers_tree(tmp_path / "flowers-102", [1, 2], trnid=[1], valid=[2], tstid=[2])
    (tmp_path / "flowers-102" / "setid.mat").write_text("garbage")
    with pytest.raises(ValueError, match="setid.mat: cannot read MATLAB file"):
        load_dataset("flowers102:train", data_root=str(tmp_path))


# ---------------------------------------------------------------- Stanford Cars


def test_stanford_cars(tmp_path: Path) -> None:
    make_cars_tree(
        tmp_path / "stanford_cars",
        train=[("00001.jpg", 14), ("00002.jpg", 3)],
        test=[("00001.jpg", 1), ("00002.jpg", 196), ("00003.jpg", 50)],
    )
    test = load_dataset("stanford_cars", data_root=str(tmp_path))
    assert [(e.id, e.label) for e in test.examples] == [
        ("cars_test/00001.jpg", 0),
        ("cars_test/00002.jpg", 195),
        ("cars_test/00003.jpg", 49),
    ]
    assert test.class_names[0] == "2000 AM General Hummer SUV"
    train = load_dataset("stanford_cars:train", data_root=str(tmp_path / "stanford_cars"))
    assert [(e.id, e.label) for e in train.examples] == [
        ("cars_train/00001.jpg", 13),
        ("cars_train/00002.jpg", 2),
    ]
    assert train.examples[1].load().mode == "RGB"


def test_stanford_cars_single_record_and_bad_class(tmp_path: Path) -> None:
    make_cars_tree(tmp_path, train=[("00001.jpg", 197)], test=[("00001.jpg", 7)])
    assert [e.label for e in load_dataset("stanford_cars", data_root=str(tmp_path)).examples] == [6]
    with pytest.raises(ValueError, match="class 197"):
        load_dataset("stanford_cars:train", data_root=str(tmp_path))


# ---------------------------------------------------------------- Caltech-101


def test_caltech_folder_mapping_covers_the_shipped_list() -> None:
    names = load_class_names("caltech101")
    folders = sorted(f for f in CALTECH_FOLDERS if f not in CALTECH_SKIPPED)
    assert len(folders) == 100
    assert [caltech_class_name(f) for f in folders] == names


def test_caltech(tmp_path: Path) -> None:
    base = tmp_path / "caltech101" / "101_ObjectCategories"
    make_caltech_tree(
        base,
        {"BACKGROUND_Google": 2, "Faces": 1, "Faces_easy": 1, "car_side": 2, "yin_yang": 1},
    )
    dataset = load_dataset("caltech101", data_root=str(tmp_path))
    names = dataset.class_names
    assert [(e.id, names[e.label]) for e in dataset.examples] == [
        ("Faces/image_0001.jpg", "face"),
        ("car_side/image_0001.jpg", "car side"),
        ("car_side/image_0002.jpg", "car side"),
        ("yin_yang/image_0001.jpg", "yin yang"),
    ]
    assert {e.split for e in dataset.examples} == {"test"}
    with pytest.raises(ValueError, match="no official split"):
        load_dataset("caltech101:train", data_root=str(tmp_path))
    make_caltech_tree(base, {"spaceship": 1})
    with pytest.raises(ValueError, match=r"match no shipped class name: \['spaceship'\]"):
        load_dataset("caltech101", data_root=str(tmp_path))


# ---------------------------------------------------------------- image folder


def test_imagefolder(tmp_path: Path) -> None:
    for name in ("zebra/b.png", "zebra/a.JPG", "ant/x/deep.jpeg", "ant/.hidden.jpg", "bee/c.webp"):
        save_image(tmp_path / name, 1)
    (tmp_path / ".cache").mkdir()
    dataset = load_dataset("imagefolder", data_root=str(tmp_path))
    assert dataset.class_names == ["ant", "bee", "zebra"]
    assert [(e.id, e.label) for e in dataset.examples] == [
        ("ant/x/deep.jpeg", 0),
        ("bee/c.webp", 1),
        ("zebra/a.JPG", 2),
        ("zebra/b.png", 2),
    ]
    (tmp_path.parent / "cls.txt").write_text("zebra\nyak\nbee\nant\n")
    relabelled = load_dataset(
        "imagefolder", str(tmp_path), classes=str(tmp_path.parent / "cls.txt")
    )
    assert [e.label for e in relabelled.examples] == [3, 2, 0, 0]
    (tmp_path.parent / "few.txt").write_text("ant\n")
    with pytest.raises(ValueError, match=r"not in class list.*\['bee', 'zebra'\]"):
        load_dataset("imagefolder", str(tmp_path), classes=str(tmp_path.parent / "few.txt"))


# ---------------------------------------------------------------- Fashion-MNIST IDX


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx(tmp_path: Path, compress: bool) -> None:
    written = make_fashion_tree(tmp_path, compress=compress)
    test = load_dataset("fashion_mnist", data_root=str(tmp_path))
    images, labels = written["test"]
    assert test.split == "test" and len(test) == 5
    assert [e.id for e in test.examples][:2] == ["test/00000", "test/00001"]
    assert [e.label for e in test.examples] == labels.tolist()
    image = test.examples[3].load()
    assert image.mode == "RGB" and image.size == (28, 28)
    assert np.array_equal(np.asarray(image)[:, :, 1], images[3])
    train = load_dataset("fashion_mnist:train", data_root=str(tmp_path))
    assert [e.label for e in train.examples] == written["train"][1].tolist()
    clone = pickle.loads(pickle.dumps(train.examples[2]))
    assert np.array_equal(np.asarray(clone.load())[:, :, 0], written["train"][0][2])


def test_idx_corruption_is_reported(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "a.gz", np.zeros((3, 4, 4), dtype=np.uint8))
    assert read_idx(path).shape == (3, 4, 4)
    raw = write_idx(tmp_path / "raw", np.zeros((3, 4, 4), dtype=np.uint8), compress=False)
    (tmp_path / "short").write_bytes(raw.read_bytes()[:-1])
    with pytest.raises(ValueError, match="short: IDX payload has 47 bytes.*need 48"):
        read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x01\x02\x08\x01" + raw.read_bytes()[4:])
    with pytest.raises(ValueError, match="magic: not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "float").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd")
    with pytest.raises(ValueError, match="data type 0x0d"):
        read_idx(tmp_path / "float")
    (tmp_path / "bad.gz").write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="bad.gz: corrupt gzip"):
        read_idx(tmp_path / "bad.gz")


def test_fashion_mnist_mismatched_or_missing_files(tmp_path: Path) -> None:
    make_fashion_tree(tmp_path, n_test=5)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        load_dataset("fashion_mnist", data_root=str(tmp_path))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(5, 10, dtype=np.uint8))
    with pytest.raises(ValueError, match="label 10 outside 0..9"):
        load_dataset("fashion_mnist", data_root=str(tmp_path))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte"):
        load_dataset("fashion_mnist", data_root=str(tmp_path / "empty"))


REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    import gzip

    dataset = load_dataset("fashion_mnist")
    assert len(dataset) == 10000 and dataset.split == "test"
    raw_labels = gzip.decompress((REAL_FASHION / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert dataset.examples[0].label == raw_labels[8]
    assert [e.label for e in dataset.examples[:50]] == list(raw_labels[8:58])
    image = dataset.examples[0].load()
    assert image.size == (28, 28) and image.mode == "RGB"
    assert dataset.examples[42].id == "test/00042"


# ---------------------------------------------------------------- load_dataset


def test_unknown_dataset_lists_the_accepted_names() -> None:
    with pytest.raises(ValueError, match="imagenet, flowers102, stanford_cars, caltech101"):
        load_dataset("cifar11")


@pytest.mark.parametrize(
    "name", ["imagenet", "flowers102", "stanford_cars", "caltech101", "imagefolder"]
)
def test_missing_data_root(name: str) -> None:
    with pytest.raises(ValueError, match="--data-root"):
        load_dataset(name)


def test_class_names_override(tmp_path: Path) -> None:
    make_fashion_tree(tmp_path)
    (tmp_path / "names.txt").write_text("".join(f"kind {i}\n" for i in range(10)))
    dataset = load_dataset("fashion_mnist", str(tmp_path), classes=str(tmp_path / "names.txt"))
    assert dataset.class_names[3] == "kind 3"
    with pytest.raises(ValueError, match="has 102 names but fashion_mnist has 10"):
        load_dataset("fashion_mnist", str(tmp_path), classes="flowers102")


def test_empty_split_in_spec() -> None:
    with pytest.raises(ValueError, match="empty split"):
        load_dataset("imagenet:")


def test_missing_root_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset("imagefolder", data_root=str(tmp_path / "nope"))
    save_image(tmp_path / "only_file.jpg")
    with pytest.raises(ValueError, match="no class folders"):
        load_dataset("imagefolder", data_root=str(tmp_path))
