"""Readers for the standard on-disk layouts of ImageNet, Flowers-102, Stanford Cars, Caltech-101.

Each maps the dataset's own labels onto the shipped class list (``data/classnames``), so label
index ``i`` always means ``load_class_names(<name>)[i]``.

Flowers-102 and Caltech-101 also have the paper's splits, ``paper_train`` and ``paper_test``:
read from the paper's released manifest (``flowers.jsonl`` / ``caltech.jsonl`` from
yuhui-zh15/VLMClassifier's ``data/``, put in the data root) when it is there, else built from the
layout (Flowers: the official split files; Caltech: see ``_caltech_paper_split``).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io

from vlmclf.data.classnames import load_class_names
from vlmclf.data.listing import (
    file_example,
    list_image_files,
    relative_id,
    require_dir,
    require_file,
    visible_subfolders,
)
from vlmclf.data.types import Dataset, Example

# ---------------------------------------------------------------- ImageNet

WNID_PATTERN = re.compile(r"^n\d{8}$")
IMAGENET_CLASSES = 1000
SYNSET_MAPPING_FILE = "LOC_synset_mapping.txt"


def read_imagenet(
    root: str | Path, split: str = "val", wnids: Sequence[str] | str | Path | None = None
) -> Dataset:
    """ImageNet-1k from class folders named by WordNet id: ``root/<split>/<wnid>/*`` or
    ``root/<wnid>/*`` (``root`` pointing at the split folder itself).

    Class index = position of the wnid in the sorted list of the 1000 ImageNet wnids (the
    standard index order, which the shipped names follow). Normally all 1000 folders must be
    present, since their sorted order *is* the index. A subset of folders is accepted only when
    the full list of 1000 wnids is known from ``wnids`` (a list, or a file with one wnid first
    on each line) or from a ``LOC_synset_mapping.txt`` (Kaggle's "wnid name" lines) found in
    ``root``, the split folder or its parent.
    """
    root = Path(root)
    base = _imagenet_split_folder(root, split)
    folders = visible_subfolders(base)
    all_wnids = _imagenet_wnid_list(root, base, wnids, [f.name for f in folders])
    index = {wnid: i for i, wnid in enumerate(sorted(all_wnids))}
    unknown = [f.name for f in folders if f.name not in index]
    if unknown:
        raise ValueError(f"{base}: folders not in the list of ImageNet wnids: {unknown[:10]}")
    examples = [
        file_example(relative_id(path, base), index[folder.name], split, path)
        for folder in folders
        for path in list_image_files(folder)
    ]
    return Dataset("imagenet", split, load_class_names("imagenet"), examples)


def _imagenet_split_folder(root: Path, split: str) -> Path:
    require_dir(root, "ImageNet")
    base = root / split if (root / split).is_dir() else root
    folders = visible_subfolders(base)
    not_wnids = [f.name for f in folders if not WNID_PATTERN.match(f.name)]
    if not folders or not_wnids:
        raise ValueError(
            f"ImageNet: expected class folders named by WordNet id (n01440764, ...) in "
            f"{root / split} or {root}; found {'no folders' if not folders else not_wnids[:10]}"
        )
    return base


def _imagenet_wnid_list(
    root: Path, base: Path, wnids: Sequence[str] | str | Path | None, found: list[str]
) -> list[str]:
    """All 1000 wnids: from ``wnids``, else a synset mapping file, else the folders found."""
    if wnids is not None:
        listed = _read_wnid_file(Path(wnids)) if isinstance(wnids, str | Path) else list(wnids)
        source = "the given wnid list"
    elif (mapping := _find_synset_mapping(root, base)) is not None:
        listed, source = _read_wnid_file(mapping), str(mapping)
    else:
        if len(set(found)) != IMAGENET_CLASSES:
            raise ValueError(
                f"ImageNet: found {len(set(found))} wnid folders in {base}, expected "
                f"{IMAGENET_CLASSES}: the class index is the position in the sorted list of all "
                f"1000 wnids. To evaluate a subset of classes, put {SYNSET_MAPPING_FILE} "
                f"(1000 lines 'wnid name') in {root}."
            )
        return found
    if len(set(listed)) != IMAGENET_CLASSES:
        raise ValueError(
            f"ImageNet: {source} holds {len(set(listed))} distinct wnids, expected "
            f"{IMAGENET_CLASSES}"
        )
    return listed


def _find_synset_mapping(root: Path, base: Path) -> Path | None:
    for folder in (root, base, base.parent):
        if (folder / SYNSET_MAPPING_FILE).is_file():
            return folder / SYNSET_MAPPING_FILE
    return None


def _read_wnid_file(path: Path) -> list[str]:
    require_file(path, "ImageNet wnid list")
    lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    wnids = [parts[0] for parts in lines if parts]
    bad = [w for w in wnids if not WNID_PATTERN.match(w)]
    if bad:
        raise ValueError(f"{path}: not WordNet ids: {bad[:5]}")
    return wnids


# ---------------------------------------------------------------- Flowers-102

FLOWERS_SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}
FLOWERS_PAPER_SPLITS = {"paper_train": ("trnid", "valid"), "paper_test": ("tstid",)}
"""The paper's Flowers-102 manifest: train = official train + val (2,040), test = official test
(6,149), each in image-number order."""
PAPER_SPLITS = ("paper_train", "paper_test")
PAPER_MANIFESTS = {"flowers102": "flowers.jsonl", "caltech101": "caltech.jsonl"}


def read_flowers102(root: str | Path, split: str = "test") -> Dataset:
    """Oxford Flowers-102: ``root/jpg/image_XXXXX.jpg``, ``root/imagelabels.mat`` (key
    ``labels``, 1-based) and ``root/setid.mat`` (``trnid``/``valid``/``tstid``, 1-based image
    numbers). ``root/flowers-102`` (torchvision's folder) is accepted too."""
    if split not in FLOWERS_SPLIT_KEYS and split not in FLOWERS_PAPER_SPLITS:
        known = [*FLOWERS_SPLIT_KEYS, *FLOWERS_PAPER_SPLITS]
        raise ValueError(f"flowers102: unknown split {split!r}; use one of {known}")
    root = Path(root)
    base = root / "flowers-102" if (root / "flowers-102" / "jpg").is_dir() else root
    images = require_dir(base / "jpg", "flowers102")
    class_names = load_class_names("flowers102")
    if split in FLOWERS_PAPER_SPLITS and (manifest := _paper_manifest(root, base, "flowers102")):
        return _paper_manifest_dataset("flowers102", manifest, split, images, class_names)
    labels = _mat_integers(base / "imagelabels.mat", "labels")
    keys = FLOWERS_PAPER_SPLITS.get(split) or (FLOWERS_SPLIT_KEYS[split],)
    parts = [_mat_integers(base / "setid.mat", key) for key in keys]
    paper = split in FLOWERS_PAPER_SPLITS  # the paper's manifest lists images by number
    numbers = np.sort(np.concatenate(parts)) if paper else parts[0]
    _check_range(labels, 1, len(class_names), base / "imagelabels.mat", "labels")
    for key, part in zip(keys, parts, strict=True):
        _check_range(part, 1, len(labels), base / "setid.mat", key)
    examples = [
        file_example(name, int(labels[n - 1]) - 1, split, images / name)
        for n in numbers
        for name in [f"image_{n:05d}.jpg"]
    ]
    return Dataset("flowers102", split, class_names, examples)


def _mat_integers(path: Path, key: str) -> np.ndarray:
    data = _load_mat(path)
    if key not in data:
        variables = sorted(k for k in data if not k.startswith("__"))
        raise ValueError(f"{path}: no variable {key!r} (found {variables})")
    values = np.asarray(data[key]).ravel()
    if values.size and not np.all(np.equal(np.mod(values, 1), 0)):
        raise ValueError(f"{path}: variable {key!r} holds non-integer values")
    return values.astype(np.int64)


def _load_mat(path: Path, **kwargs: object) -> dict:
    require_file(path, "MATLAB file")
    try:
        return scipy.io.loadmat(path, **kwargs)
    except Exception as err:  # scipy raises several unrelated types for a corrupt file
        raise ValueError(f"{path}: cannot read MATLAB file ({err})") from err


def _check_range(values: np.ndarray, low: int, high: int, path: Path, key: str) -> None:
    bad = values[(values < low) | (values > high)]
    if bad.size:
        raise ValueError(f"{path}: {key} has values outside {low}..{high}: {bad[:5].tolist()}")


# ---------------------------------------------------------------- Stanford Cars


def read_stanford_cars(root: str | Path, split: str = "test") -> Dataset:
    """Stanford Cars in torchvision's layout, under ``root/stanford_cars`` or ``root``:
    ``cars_train/``, ``cars_test/``, ``devkit/cars_train_annos.mat`` and
    ``cars_test_annos_withlabels.mat`` (also looked for in ``devkit/``); ``annotations``
    records with ``fname`` and a 1-based ``class`` (class 1 = shipped index 0)."""
    if split not in ("train", "test"):
        raise ValueError(f"stanford_cars: unknown split {split!r}; use 'train' or 'test'")
    root = Path(root)
    base = root / "stanford_cars" if (root / "stanford_cars").is_dir() else root
    annotations, images = _cars_paths(base, split)
    class_names = load_class_names("stanford_cars")
    records = _cars_records(annotations)
    examples = []
    for position, (fname, label) in enumerate(records):
        if not 1 <= label <= len(class_names):
            raise ValueError(f"{annotations}: record {position} has class {label}, outside 1..196")
        examples.append(file_example(f"{images.name}/{fname}", label - 1, split, images / fname))
    return Dataset("stanford_cars", split, class_names, examples)


def _cars_paths(base: Path, split: str) -> tuple[Path, Path]:
    if split == "train":
        annotations = base / "devkit" / "cars_train_annos.mat"
    else:
        name = "cars_test_annos_withlabels.mat"
        annotations = next(
            (p for p in (base / name, base / "devkit" / name) if p.is_file()), base / name
        )
    images = require_dir(base / f"cars_{split}", "stanford_cars")
    if (images / images.name).is_dir():  # archives that unpack to cars_test/cars_test/
        images = images / images.name
    return require_file(annotations, "stanford_cars"), images


def _cars_records(path: Path) -> list[tuple[str, int]]:
    data = _load_mat(path, squeeze_me=True)
    if "annotations" not in data:
        raise ValueError(f"{path}: no variable 'annotations'")
    table = np.atleast_1d(data["annotations"])
    fields = table.dtype.names or ()
    if "fname" not in fields or "class" not in fields:
        raise ValueError(f"{path}: annotations need fields 'fname' and 'class', found {fields}")
    return [(str(row["fname"]), int(row["class"])) for row in table]


# ---------------------------------------------------------------- Caltech-101

CALTECH_SKIPPED = ("BACKGROUND_Google", "Faces_easy")
"""Skipped folders, as in CoOp's split (whose 100 names the shipped list follows): the
background clutter class, and Faces_easy (the same faces as Faces, cropped tighter)."""
CALTECH_RENAMED = {
    "Faces": "face",
    "Faces_easy": "face",  # the paper's manifest keeps this folder, under the same name
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
    "airplanes": "airplane",
}


def caltech_class_name(folder: str) -> str:
    """The shipped name of a Caltech-101 folder: the explicit table, else lower case with
    underscores as spaces (``car_side`` -> ``car side``)."""
    return CALTECH_RENAMED.get(folder, folder.replace("_", " ").lower())


def read_caltech101(root: str | Path, split: str = "test") -> Dataset:
    """Caltech-101: ``root/101_ObjectCategories/<class>/*.jpg`` (or
    ``root/caltech101/101_ObjectCategories``). There is no official split: every image is
    returned as split ``test``. Folders map to the 100 shipped names via ``caltech_class_name``;
    a folder that maps to no name is an error."""
    if split != "test" and split not in PAPER_SPLITS:
        raise ValueError(
            "caltech101 has no official split: all images form split 'test', and the paper's "
            f"halves are 'paper_train' / 'paper_test' (got {split!r})"
        )
    root = Path(root)
    candidates = [root / "101_ObjectCategories", root / "caltech101" / "101_ObjectCategories"]
    base = next((c for c in candidates if c.is_dir()), None)
    if base is None:
        raise ValueError(f"caltech101: none of {[str(c) for c in candidates]} exists")
    class_names = load_class_names("caltech101")
    if split in PAPER_SPLITS:
        manifest = _paper_manifest(root, base.parent, "caltech101")
        if manifest is not None:
            return _paper_manifest_dataset("caltech101", manifest, split, base, class_names)
        return _caltech_paper_split(base, split, class_names)
    index = {name: i for i, name in enumerate(class_names)}
    folders = [f for f in visible_subfolders(base) if f.name not in CALTECH_SKIPPED]
    unmapped = [f.name for f in folders if caltech_class_name(f.name) not in index]
    if unmapped:
        raise ValueError(f"caltech101: folders in {base} match no shipped class name: {unmapped}")
    examples: list[Example] = [
        file_example(relative_id(path, base), index[caltech_class_name(folder.name)], split, path)
        for folder in folders
        for path in list_image_files(folder)
    ]
    return Dataset("caltech101", split, class_names, examples)


def _caltech_paper_split(base: Path, split: str, class_names: list[str]) -> Dataset:
    """The paper's split rebuilt from the layout (no manifest given).

    Its composition, as read from the released manifest: every folder but BACKGROUND_Google
    (``Faces`` and ``Faces_easy`` both labelled ``face``: 8,677 images), each folder cut into
    halves. The manifest's halves were drawn at random by code that was not published, so this
    cut (per folder: sorted files shuffled by ``random.Random("<folder>")``, the first ceil(n/2)
    to train) has the same sizes up to one image per folder, not the same images.
    """
    index = {name: i for i, name in enumerate(class_names)}
    folders = [f for f in visible_subfolders(base) if f.name != "BACKGROUND_Google"]
    unmapped = [f.name for f in folders if caltech_class_name(f.name) not in index]
    if unmapped:
        raise ValueError(f"caltech101: folders in {base} match no shipped class name: {unmapped}")
    examples: list[Example] = []
    for folder in folders:
        files = list_image_files(folder)
        random.Random(folder.name).shuffle(files)
        half = (len(files) + 1) // 2
        chosen = files[:half] if split == "paper_train" else files[half:]
        label = index[caltech_class_name(folder.name)]
        examples.extend(file_example(relative_id(p, base), label, split, p) for p in chosen)
    return Dataset("caltech101", split, class_names, examples)


def _paper_manifest(root: Path, base: Path, dataset: str) -> Path | None:
    """The paper's released manifest for ``dataset`` in the data root, if it was put there."""
    name = PAPER_MANIFESTS[dataset]
    return next((p for p in (root / name, base / name) if p.is_file()), None)


def _paper_manifest_dataset(
    dataset: str, manifest: Path, split: str, images: Path, class_names: list[str]
) -> Dataset:
    """Lines of the paper's manifest whose split is ``split`` minus its ``paper_`` prefix, in
    file order. Its image paths (``./data/Caltech101/101_ObjectCategories/<folder>/<file>``,
    ``./data/Flowers102/jpg/<file>``) are resolved under ``images`` by their last parts."""
    wanted = split.removeprefix("paper_")
    depth = 2 if dataset == "caltech101" else 1
    index = {name: i for i, name in enumerate(class_names)}
    examples: list[Example] = []
    for number, text in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
            image, label, row_split = str(row["image"]), str(row["label"]), row["split"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{manifest} line {number}: not a paper manifest line ({err})"
            ) from err
        if row_split != wanted:
            continue
        if label not in index:
            raise ValueError(f"{manifest} line {number}: label {label!r} is not a {dataset} name")
        relative = "/".join(Path(image).parts[-depth:])
        examples.append(file_example(relative, index[label], split, images / relative))
    if not examples:
        raise ValueError(f"{manifest}: no lines with split {wanted!r}")
    return Dataset(dataset, split, class_names, examples)
