"""Builders of miniature copies of the benchmark releases, in their real file formats.

Each writes a few real images (PIL) into the official folder structure with the official list
files: ``.txt`` lists, ``.mat`` files (scipy.io.savemat), CIFAR's pickled python batches. A
builder returns ``{split: [(id, label index), ...]}``: what the reader must find.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

Expected = dict[str, list[tuple[str, int]]]


def write_image(path: Path, seed: int, size: tuple[int, int] = (20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def build_oxford_pets(root: Path) -> Expected:
    base = root / "oxford-iiit-pet"
    rows = {
        "trainval": [("Abyssinian_1", 1), ("american_bulldog_3", 2), ("yorkshire_terrier_9", 37)],
        "test": [("Bengal_4", 6), ("beagle_2", 5)],
    }
    for split, items in rows.items():
        _text(base / "annotations" / f"{split}.txt", [f"{n} {c} 1 {c}" for n, c in items])
        for i, (name, _) in enumerate(items):
            write_image(base / "images" / f"{name}.jpg", i)
    return {s: [(f"{n}.jpg", c - 1) for n, c in items] for s, items in rows.items()}


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def build_cub200(root: Path) -> Expected:
    base = root / "CUB_200_2011"
    classes = [f"{i:03d}.Class_{i}" for i in range(1, 201)]
    classes[:3] = CUB_CLASSES
    _text(base / "classes.txt", [f"{i} {c}" for i, c in enumerate(classes, start=1)])
    items = [  # id, class number, is_training
        (1, 1, 1), (2, 1, 0), (3, 2, 0), (4, 3, 1), (5, 200, 0),
    ]  # fmt: skip
    paths = {}
    for image_id, klass, _ in items:
        paths[image_id] = f"{classes[klass - 1]}/bird_{image_id:04d}.jpg"
        write_image(base / "images" / paths[image_id], image_id)
    _text(base / "images.txt", [f"{i} {paths[i]}" for i, _, _ in items])
    _text(base / "train_test_split.txt", [f"{i} {t}" for i, _, t in items])
    _text(base / "image_class_labels.txt", [f"{i} {c}" for i, c, _ in items])
    return {
        split: [(paths[i], c - 1) for i, c, t in items if t == (split == "train")]
        for split in ("train", "test")
    }


AIRCRAFT = [  # image id, variant, family, manufacturer
    ("0034309", "707-320", "Boeing 707", "Boeing"),
    ("0056978", "A380", "A380", "Airbus"),
    ("1514522", "Cessna 172", "Cessna 172", "Cessna"),
    ("0062765", "Yak-42", "Yak-42", "Yakovlev"),
]


def build_fgvc_aircraft(root: Path) -> dict[str, Expected]:
    """Expected per level (``variant``, ``family``, ``manufacturer``), splits test and train."""
    from vlmclf.data import load_class_names

    base = root / "fgvc-aircraft-2013b" / "data"
    parts = {"test": AIRCRAFT[:3], "train": AIRCRAFT[3:]}
    expected: dict[str, Expected] = {}
    for position, level in enumerate(("variant", "family", "manufacturer"), start=1):
        names = load_class_names(
            "fgvc_aircraft" if level == "variant" else f"fgvc_aircraft_{level}"
        )
        for split, rows in parts.items():
            _text(base / f"images_{level}_{split}.txt", [f"{r[0]} {r[position]}" for r in rows])
        expected[level] = {
            split: [(f"{r[0]}.jpg", names.index(r[position])) for r in rows]
            for split, rows in parts.items()
        }
    for i, row in enumerate(AIRCRAFT):
        write_image(base / "images" / f"{row[0]}.jpg", i, size=(30, 20))
    return expected


def build_food101(root: Path) -> Expected:
    from vlmclf.data import load_class_names

    base = root / "food-101"
    folders = [name.replace(" ", "_") for name in load_class_names("food101")]
    _text(base / "meta" / "classes.txt", folders)
    rows = {"train": ["apple_pie/1005649", "waffles/22"], "test": ["baklava/3", "waffles/7"]}
    for split, items in rows.items():
        _text(base / "meta" / f"{split}.txt", items)
        for i, item in enumerate(items):
            write_image(base / "images" / f"{item}.jpg", i)
    return {s: [(f"{i}.jpg", folders.index(i.split("/")[0])) for i in v] for s, v in rows.items()}


def build_stanford_dogs(root: Path) -> Expected:
    rows = {
        "train": [("n02085620-Chihuahua/n02085620_10074.jpg", 1)],
        "test": [
            ("n02085620-Chihuahua/n02085620_2650.jpg", 1),
            ("n02116738-African_hunting_dog/n02116738_9829.jpg", 120),
            ("n02099601-golden_retriever/n02099601_3.jpg", 56),
        ],
    }
    for split, items in rows.items():
        files = np.empty((len(items), 1), dtype=object)
        for i, (name, _) in enumerate(items):
            files[i, 0] = np.array([name])
            write_image(root / "Images" / name, i)
        labels = np.array([[float(label)] for _, label in items])
        scipy.io.savemat(root / f"{split}_list.mat", {"file_list": files, "labels": labels})
    return {s: [(n, label - 1) for n, label in items] for s, items in rows.items()}


def build_dtd(root: Path) -> Expected:
    from vlmclf.data import load_class_names

    base = root / "dtd"
    names = load_class_names("dtd")
    rows = {
        "train1": ["banded/banded_0002.jpg", "zigzagged/zigzagged_0011.jpg"],
        "test1": ["bubbly/bubbly_0038.jpg", "banded/banded_0004.jpg"],
    }
    for split, items in rows.items():
        _text(base / "labels" / f"{split}.txt", items)
        for i, item in enumerate(items):
            write_image(base / "images" / item, i)
    return {s: [(i, names.index(i.split("/")[0])) for i in v] for s, v in rows.items()}


def build_sun397(root: Path) -> Expected:
    from vlmclf.data import load_class_names

    class_paths = [f"/x/class_{i:03d}" for i in range(397)]
    class_paths[:3] = ["/a/abbey", "/a/airplane_cabin", "/a/airport_terminal"]
    class_paths[-1] = "/y/youth_hostel"
    class_paths[8] = "/a/apartment_building/outdoor"
    assert len(load_class_names("sun397")) == 397
    _text(root / "SUN397" / "ClassName.txt", class_paths)
    rows = {
        "train1": ["/a/abbey/sun_aaa.jpg", "/y/youth_hostel/sun_bbb.jpg"],
        "test1": ["/a/apartment_building/outdoor/sun_ccc.jpg", "/a/abbey/sun_ddd.jpg"],
    }
    names = {"train1": "Training_01.txt", "test1": "Testing_01.txt"}
    for split, items in rows.items():
        _text(root / "Partitions" / names[split], items)
        for i, item in enumerate(items):
            write_image(root / "SUN397" / item.lstrip("/"), i)
    return {
        split: [(i.lstrip("/"), class_paths.index(i.rsplit("/", 1)[0])) for i in items]
        for split, items in rows.items()
    }


def cifar_rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (count, 3072), dtype=np.uint8)


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"testing batch 1 of 1", key: labels, b"data": data}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def build_cifar10(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Writes every batch file; returns the concatenated (data, labels) per split."""
    base = root / "cifar-10-batches-py"
    train_data, train_labels = [], []
    for i in range(1, 6):
        data, labels = cifar_rows(2, i), [i, (i * 3) % 10]
        write_cifar_batch(base / f"data_batch_{i}", data, labels, b"labels")
        train_data.append(data)
        train_labels += labels
    test = cifar_rows(3, 9), [0, 9, 4]
    write_cifar_batch(base / "test_batch", test[0], test[1], b"labels")
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return {"train": (np.concatenate(train_data), train_labels), "test": test}


def build_cifar100(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    base = root / "cifar-100-python"
    out = {}
    for split, (count, seed) in {"train": (3, 1), "test": (4, 2)}.items():
        data, labels = cifar_rows(count, seed), [(seed * 37 + i * 29) % 100 for i in range(count)]
        write_cifar_batch(base / split, data, labels, b"fine_labels")
        out[split] = (data, labels)
    return out


def build_wnid_folders(base: Path, wnids: list[str], per_class: int = 2) -> list[str]:
    """``base/<wnid>/<file>.jpg``; returns the relative ids written."""
    ids = []
    for c, wnid in enumerate(wnids):
        for i in range(per_class):
            relative = f"{wnid}/{wnid}_{i}.jpg"
            write_image(base / relative, 10 * c + i)
            ids.append(relative)
    return ids
