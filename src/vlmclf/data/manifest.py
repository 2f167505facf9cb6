"""Write a JSONL manifest from any supported layout, so a dataset can be frozen, edited or
shared as one plain file (``{"image", "label", "split"}`` per line, labels as class names)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vlmclf.data.readers import LAYOUTS, load_dataset
from vlmclf.data.types import Dataset, Example

IN_MEMORY_LAYOUTS = ("fashion_mnist", "cifar10", "cifar100")
"""Layouts without image files: their images are written out as PNGs next to the manifest."""


def write_manifest(layout: str, root: str, out: str, split: str | None = None) -> int:
    """Write the manifest of ``layout`` (read from ``root``) to ``out``; return the line count.

    Image paths are relative to the manifest's folder when the image lies under it, absolute
    otherwise. Fashion-MNIST images are saved as ``<out stem>_images/<split>/<n>.png`` so the
    manifest stands alone. Reading the manifest back gives the same label names in the same
    order (indices follow the class list given when reading, e.g. ``classes="imagenet"``;
    ImageNet's duplicated names then map to their first index).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    dataset = load_dataset(layout, data_root=root, split=split)
    out_path = Path(out)
    out_dir = Path(os.path.abspath(out_path.parent))
    out_dir.mkdir(parents=True, exist_ok=True)
    images_dir = out_dir / f"{out_path.stem}_images"
    partial_path = out_path.with_name(out_path.name + ".partial")
    with partial_path.open("w", encoding="utf-8") as lines:
        for example in dataset.examples:
            if layout in IN_MEMORY_LAYOUTS:
                image = _save_png(example, images_dir)
            else:
                image = Path(example.source)
            lines.write(json.dumps(_manifest_record(dataset, example, image, out_dir)) + "\n")
    os.replace(partial_path, out_path)
    return len(dataset.examples)


def _manifest_record(dataset: Dataset, example: Example, image: Path, out_dir: Path) -> dict:
    return {
        "image": _path_for_manifest(image, out_dir),
        "label": dataset.class_names[example.label],
        "split": example.split,
    }


def _path_for_manifest(image: Path, out_dir: Path) -> str:
    absolute = Path(os.path.abspath(image))
    if absolute.is_relative_to(out_dir):
        return absolute.relative_to(out_dir).as_posix()
    return str(absolute)


def _save_png(example: Example, images_dir: Path) -> Path:
    target = images_dir / f"{example.id}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    example.load().save(target, format="PNG")
    return target
