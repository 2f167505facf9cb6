"""Readers for the fine-grained benchmarks in their official release layouts: Oxford-IIIT Pets,
CUB-200-2011, FGVC-Aircraft (three class levels), Food-101, Stanford Dogs, DTD and SUN397.

Each reads the split lists the dataset's authors distribute, maps their labels onto the shipped
class list (``data/classnames/<name>.json``, so label ``i`` means ``load_class_names(name)[i]``)
and gives every example its image path relative to the images folder as a stable id. A missing
list file is a one-line ValueError naming it; a label a list cannot place names the file and
line. Images are only opened in ``Example.load()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from vlmclf.data.classnames import load_class_names
from vlmclf.data.layouts import _load_mat
from vlmclf.data.listing import file_example, require_dir, require_file
from vlmclf.data.types import Dataset, Example


def _first_existing(candidates: list[Path], *markers: str) -> Path:
    """The first folder holding the first marker (a file or folder), else the first holding a
    later one, else the first candidate: the caller then reports the missing file there."""
    for marker in markers:
        found = next((c for c in candidates if (c / marker).exists()), None)
        if found is not None:
            return found
    return candidates[0]


def _lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """Numbered non-blank, non-comment lines of a text list."""
    require_file(path, what)
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text.strip() and not text.lstrip().startswith("#"):
            yield number, text.strip()


def _check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise ValueError(f"{name}: unknown split {split!r}; use one of {list(splits)}")


def _bad_line(path: Path, number: int, reason: str) -> ValueError:
    return ValueError(f"{path} line {number}: {reason}")


# ---------------------------------------------------------------- Oxford-IIIT Pets

PETS_SPLITS = ("trainval", "test")


def read_oxford_pets(root: str | Path, split: str = "test") -> Dataset:
    """Oxford-IIIT Pets: ``annotations/{trainval,test}.txt`` (lines ``<image> <class 1..37>
    <species> <breed id>``) and ``images/<image>.jpg``, under ``root`` or
    ``root/oxford-iiit-pet`` (torchvision's folder)."""
    _check_split("oxford_pets", split, PETS_SPLITS)
    root = Path(root)
    base = _first_existing([root, root / "oxford-iiit-pet"], "annotations", "images")
    class_names = load_class_names("oxford_pets")
    listing = base / "annotations" / f"{split}.txt"
    images = require_dir(base / "images", "oxford_pets")
    examples = []
    for number, text in _lines(listing, "oxford_pets"):
        parts = text.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise _bad_line(listing, number, f"expected '<image> <class id> ...', got {text!r}")
        label = int(parts[1])
        if not 1 <= label <= len(class_names):
            raise _bad_line(listing, number, f"class id {label} outside 1..{len(class_names)}")
        name = f"{parts[0]}.jpg"
        examples.append(file_example(name, label - 1, split, images / name))
    return Dataset("oxford_pets", split, class_names, examples)


# ---------------------------------------------------------------- CUB-200-2011

CUB_SPLITS = ("train", "test")


def read_cub200(root: str | Path, split: str = "test") -> Dataset:
    """CUB-200-2011 under ``root`` or ``root/CUB_200_2011``: ``images.txt`` (``<id> <path>``),
    ``train_test_split.txt`` (``<id> <1 train / 0 test>``), ``image_class_labels.txt``
    (``<id> <class 1..200>``), ``classes.txt`` (200 lines) and ``images/<path>``."""
    _check_split("cub200", split, CUB_SPLITS)
    root = Path(root)
    base = _first_existing([root, root / "CUB_200_2011"], "images.txt", "images")
    class_names = load_class_names("cub200")
    classes_file = base / "classes.txt"
    listed = sum(1 for _ in _lines(classes_file, "cub200"))
    if listed != len(class_names):
        raise ValueError(f"{classes_file}: {listed} classes listed, expected {len(class_names)}")
    paths = _cub_table(base / "images.txt")
    is_train = _cub_table(base / "train_test_split.txt")
    labels = _cub_table(base / "image_class_labels.txt")
    images = require_dir(base / "images", "cub200")
    wanted = "1" if split == "train" else "0"
    examples = []
    for image_id, relative in paths.items():
        for table, file in ((is_train, "train_test_split.txt"), (labels, "image_class_labels.txt")):
            if image_id not in table:
                raise ValueError(f"{base / file}: no line for image id {image_id} ({relative})")
        if is_train[image_id] != wanted:
            continue
        label = int(labels[image_id]) if labels[image_id].isdigit() else 0
        if not 1 <= label <= len(class_names):
            raise ValueError(
                f"{base / 'image_class_labels.txt'}: image id {image_id} has class "
                f"{labels[image_id]!r}, outside 1..{len(class_names)}"
            )
        examples.append(file_example(relative, label - 1, split, images / relative))
    return Dataset("cub200", split, class_names, examples)


def _cub_table(path: Path) -> dict[str, str]:
    """``<image id> <value>`` lines as a dict, in file order."""
    table: dict[str, str] = {}
    for number, text in _lines(path, "cub200"):
        parts = text.split(maxsplit=1)
        if len(parts) != 2:
            raise _bad_line(path, number, f"expected '<image id> <value>', got {text!r}")
        table[parts[0]] = parts[1]
    return table


# ---------------------------------------------------------------- FGVC-Aircraft

AIRCRAFT_SPLITS = ("train", "val", "trainval", "test")
AIRCRAFT_LEVELS = {
    "fgvc_aircraft": "variant",
    "fgvc_aircraft_family": "family",
    "fgvc_aircraft_manufacturer": "manufacturer",
}
"""Layout name -> annotation level: the same images, labelled as one of 100 variants
(``707-320``), 70 families (``Boeing 707``) or 30 manufacturers (``Boeing``)."""


def read_fgvc_aircraft(root: str | Path, split: str = "test", level: str = "variant") -> Dataset:
    """FGVC-Aircraft (2013b) under ``root``, ``root/data`` or ``root/fgvc-aircraft-2013b/data``:
    ``images_<level>_<split>.txt`` (lines ``<image id> <class name>``) and
    ``images/<image id>.jpg``. Labels are class names, placed in the shipped list of the level."""
    name = next(n for n, lv in AIRCRAFT_LEVELS.items() if lv == level)
    _check_split(name, split, AIRCRAFT_SPLITS)
    root = Path(root)
    candidates = [root, root / "data", root / "fgvc-aircraft-2013b" / "data"]
    base = _first_existing(candidates, f"images_{level}_{split}.txt", "images")
    class_names = load_class_names(name)
    index = {class_name: i for i, class_name in enumerate(class_names)}
    listing = base / f"images_{level}_{split}.txt"
    images = require_dir(base / "images", name)
    examples = []
    for number, text in _lines(listing, name):
        parts = text.split(maxsplit=1)
        if len(parts) != 2:
            raise _bad_line(listing, number, f"expected '<image id> <{level}>', got {text!r}")
        if parts[1] not in index:
            raise _bad_line(listing, number, f"{level} {parts[1]!r} is not in the {name} list")
        image = f"{parts[0]}.jpg"
        examples.append(file_example(image, index[parts[1]], split, images / image))
    return Dataset(name, split, class_names, examples)


def aircraft_reader(level: str) -> Callable[[str | Path, str], Dataset]:
    """``read_fgvc_aircraft`` at one class level, as a ``(root, split) -> Dataset`` reader."""

    def read(root: str | Path, split: str = "test") -> Dataset:
        return read_fgvc_aircraft(root, split, level)

    return read


# ---------------------------------------------------------------- Food-101

FOOD_SPLITS = ("train", "test")


def read_food101(root: str | Path, split: str = "test") -> Dataset:
    """Food-101 under ``root`` or ``root/food-101``: ``meta/classes.txt`` (101 folder names;
    line order = class index), ``meta/{train,test}.txt`` (``<class>/<image id>``) and
    ``images/<class>/<image id>.jpg``."""
    _check_split("food101", split, FOOD_SPLITS)
    root = Path(root)
    base = _first_existing([root, root / "food-101"], "meta", "images")
    class_names = load_class_names("food101")
    classes_file = base / "meta" / "classes.txt"
    folders = [text for _, text in _lines(classes_file, "food101")]
    if len(folders) != len(class_names):
        raise ValueError(
            f"{classes_file}: {len(folders)} classes listed, expected {len(class_names)}"
        )
    index = {folder: i for i, folder in enumerate(folders)}
    listing = base / "meta" / f"{split}.txt"
    images = require_dir(base / "images", "food101")
    examples = []
    for number, text in _lines(listing, "food101"):
        folder = text.split("/", 1)[0]
        if folder not in index:
            raise _bad_line(listing, number, f"class {folder!r} is not in {classes_file}")
        relative = f"{text}.jpg"
        examples.append(file_example(relative, index[folder], split, images / relative))
    return Dataset("food101", split, class_names, examples)


# ---------------------------------------------------------------- Stanford Dogs

DOGS_SPLITS = ("train", "test")


def read_stanford_dogs(root: str | Path, split: str = "test") -> Dataset:
    """Stanford Dogs: ``{train,test}_list.mat`` (``file_list``: ``<wnid>-<breed>/<file>.jpg``,
    ``labels``: 1..120) in ``root`` or ``root/lists``, and ``Images/`` in ``root``. Class ``i``
    is the i-th breed in WordNet-id order; the names are ImageNet's names of those synsets."""
    _check_split("stanford_dogs", split, DOGS_SPLITS)
    root = Path(root)
    base = _first_existing([root, root / "lists"], f"{split}_list.mat")
    listing = base / f"{split}_list.mat"
    data = _load_mat(listing, squeeze_me=True)
    for key in ("file_list", "labels"):
        if key not in data:
            raise ValueError(f"{listing}: no variable {key!r}")
    files = [str(f) for f in np.atleast_1d(data["file_list"])]
    labels = np.atleast_1d(data["labels"]).astype(np.int64)
    if len(files) != len(labels):
        raise ValueError(f"{listing}: {len(files)} files but {len(labels)} labels")
    class_names = load_class_names("stanford_dogs")
    images = require_dir(root / "Images", "stanford_dogs")
    examples = []
    for position, (relative, label) in enumerate(zip(files, labels, strict=True)):
        if not 1 <= label <= len(class_names):
            raise ValueError(
                f"{listing}: entry {position} ({relative}) has label {label}, outside 1..120"
            )
        examples.append(file_example(relative, int(label) - 1, split, images / relative))
    return Dataset("stanford_dogs", split, class_names, examples)


# ---------------------------------------------------------------- DTD

OFFICIAL_FOLDS = 10
"""DTD and SUN397 each come with ten official train/test folds, numbered from 1."""
DTD_SPLITS = tuple(
    f"{kind}{fold}" for kind in ("train", "val", "test") for fold in range(1, OFFICIAL_FOLDS + 1)
)


def read_dtd(root: str | Path, split: str = "test1") -> Dataset:
    """Describable Textures under ``root`` or ``root/dtd``: ``labels/<split>.txt`` (``train1``
    .. ``test10``, ten official folds; lines ``<texture>/<file>.jpg``) and ``images/``."""
    _check_split("dtd", split, DTD_SPLITS)
    root = Path(root)
    base = _first_existing([root, root / "dtd"], "labels", "images")
    class_names = load_class_names("dtd")
    index = {name: i for i, name in enumerate(class_names)}
    listing = base / "labels" / f"{split}.txt"
    images = require_dir(base / "images", "dtd")
    examples = []
    for number, text in _lines(listing, "dtd"):
        texture = text.split("/", 1)[0]
        if texture not in index:
            raise _bad_line(listing, number, f"texture {texture!r} is not one of DTD's 47")
        examples.append(file_example(text, index[texture], split, images / text))
    return Dataset("dtd", split, class_names, examples)


# ---------------------------------------------------------------- SUN397

SUN_SPLITS = tuple(
    f"{kind}{fold}" for kind in ("train", "test") for fold in range(1, OFFICIAL_FOLDS + 1)
)
SUN_PARTITION_FILES = {"train": "Training", "test": "Testing"}


def read_sun397(root: str | Path, split: str = "test1") -> Dataset:
    """SUN397: the images as released (``SUN397/<letter>/<class path>/<file>.jpg``, with
    ``ClassName.txt``, 397 lines like ``/a/abbey``, line order = class index) and the official
    partitions (``Training_01.txt`` .. ``Testing_10.txt``, lines ``/a/abbey/sun_x.jpg``; split
    ``train1`` .. ``test10``), looked for in ``root``, ``root/SUN397`` and ``root/Partitions``."""
    _check_split("sun397", split, SUN_SPLITS)
    root = Path(root)
    folders = [root, root / "SUN397", root / "Partitions"]
    images = root / "SUN397" if (root / "SUN397").is_dir() else root
    kind = "train" if split.startswith("train") else "test"
    partition = f"{SUN_PARTITION_FILES[kind]}_{int(split[len(kind) :]):02d}.txt"
    listing = _first_existing(folders, partition, "Testing_01.txt") / partition
    classes_file = _first_existing(folders, "ClassName.txt", "Testing_01.txt") / "ClassName.txt"
    class_paths = [text.rstrip("/") for _, text in _lines(classes_file, "sun397")]
    class_names = load_class_names("sun397")
    if len(class_paths) != len(class_names):
        raise ValueError(
            f"{classes_file}: {len(class_paths)} classes listed, expected {len(class_names)}"
        )
    index = {path: i for i, path in enumerate(class_paths)}
    examples: list[Example] = []
    for number, text in _lines(listing, "sun397"):
        class_path = text.rsplit("/", 1)[0]
        if class_path not in index:
            raise _bad_line(listing, number, f"class {class_path!r} is not in {classes_file}")
        relative = text.lstrip("/")
        examples.append(file_example(relative, index[class_path], split, images / relative))
    return Dataset("sun397", split, class_names, examples)
