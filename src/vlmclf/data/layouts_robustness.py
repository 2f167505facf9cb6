"""Readers for ImageNet's distribution-shift test sets: ImageNetV2, ImageNet-R, ImageNet-A and
ImageNet-Sketch, in the folder layouts their authors release.

All are labelled with ImageNet-1k synsets. V2 and Sketch cover all 1000 classes and use
ImageNet's class list. R and A cover 200 classes each and are scored against ImageNet's list
restricted to those 200 (``imagenet_r`` / ``imagenet_a``, in WordNet-id order), as their papers
evaluate them: a ``--k all`` run is 200-way. The wnid lists are shipped
(``data/classnames/wnids.json``), so a subset of folders is read with the right indices.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

from vlmclf.data.classnames import load_class_names
from vlmclf.data.listing import (
    file_example,
    list_image_files,
    relative_id,
    require_dir,
    visible_subfolders,
)
from vlmclf.data.types import Dataset

V2_SPLITS = ("matched-frequency", "threshold0.7", "top-images")
"""ImageNetV2's three sampling variants; each unpacks to ``imagenetv2-<variant>-format-val/``."""
IMAGENET_CLASSES = 1000


@cache
def shipped_wnids(name: str) -> tuple[str, ...]:
    """The sorted WordNet ids of ``imagenet`` (1000), ``imagenet_r``, ``imagenet_a`` (200 each)
    or ``stanford_dogs`` (120): class ``i`` of that list is synset ``shipped_wnids(name)[i]``."""
    text = resources.files("vlmclf.data").joinpath("classnames", "wnids.json").read_text("utf-8")
    return tuple(json.loads(text)[name])


def read_imagenet_v2(root: str | Path, split: str = "matched-frequency") -> Dataset:
    """ImageNetV2: ``imagenetv2-<split>-format-val/<class index>/<file>.jpeg`` in ``root``, or
    ``root`` itself holding the folders ``0`` .. ``999`` (the folder name is the class index)."""
    if split not in V2_SPLITS:
        raise ValueError(f"imagenet_v2: unknown split {split!r}; use one of {list(V2_SPLITS)}")
    root = Path(root)
    packed = root / f"imagenetv2-{split}-format-val"
    base = require_dir(packed if packed.is_dir() else root, "imagenet_v2")
    folders = visible_subfolders(base)
    bad = [f.name for f in folders if not (f.name.isdigit() and int(f.name) < IMAGENET_CLASSES)]
    if not folders or bad:
        raise ValueError(
            f"imagenet_v2: expected class folders 0..999 in {packed} or {root}; found "
            f"{'no folders' if not folders else bad[:10]}"
        )
    examples = [
        file_example(relative_id(path, base), int(folder.name), split, path)
        for folder in folders
        for path in list_image_files(folder)
    ]
    return Dataset("imagenet_v2", split, load_class_names("imagenet"), examples)


def read_imagenet_r(root: str | Path, split: str = "test") -> Dataset:
    """ImageNet-R: ``imagenet-r/<wnid>/*.jpg`` (or ``root/<wnid>``), 200 classes."""
    return _read_wnid_folders("imagenet_r", Path(root), split, "imagenet-r")


def read_imagenet_a(root: str | Path, split: str = "test") -> Dataset:
    """ImageNet-A: ``imagenet-a/<wnid>/*.jpg`` (or ``root/<wnid>``), 200 classes."""
    return _read_wnid_folders("imagenet_a", Path(root), split, "imagenet-a")


def read_imagenet_sketch(root: str | Path, split: str = "test") -> Dataset:
    """ImageNet-Sketch: ``sketch/<wnid>/*.JPEG`` (or ``imagenet-sketch/sketch``, or
    ``root/<wnid>``), 1000 classes."""
    root = Path(root)
    base = root / "imagenet-sketch" if (root / "imagenet-sketch").is_dir() else root
    return _read_wnid_folders("imagenet_sketch", base, split, "sketch")


def _read_wnid_folders(name: str, root: Path, split: str, folder: str) -> Dataset:
    """Class folders named by wnid; the class index is the wnid's place in the shipped list."""
    if split != "test":
        raise ValueError(f"{name} has one split, 'test' (got {split!r})")
    list_name = "imagenet" if name == "imagenet_sketch" else name
    wnids = shipped_wnids(list_name)
    base = require_dir(root / folder if (root / folder).is_dir() else root, name)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    folders = visible_subfolders(base)
    unknown = [f.name for f in folders if f.name not in index]
    if not folders or unknown:
        raise ValueError(
            f"{name}: expected folders named by the {len(wnids)} WordNet ids of {name} in "
            f"{root / folder} or {root}; found {'no folders' if not folders else unknown[:10]}"
        )
    examples = [
        file_example(relative_id(path, base), index[sub.name], split, path)
        for sub in folders
        for path in list_image_files(sub)
    ]
    return Dataset(name, split, load_class_names(list_name), examples)
