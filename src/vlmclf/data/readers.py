"""Dataset readers: JSONL manifests, generic image folders, and ``load_dataset`` for all layouts.

Every reader returns a ``Dataset`` whose Examples open their image lazily. Readers check the
structure (files, labels, class lists) and fail with ValueError naming the file and line;
undecodable images only fail later, one example at a time, in ``Example.load()``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from vlmclf.data.catalog import BENCHMARK_LAYOUTS
from vlmclf.data.classnames import load_class_names
from vlmclf.data.idx import FASHION_MNIST_ROOT, read_fashion_mnist
from vlmclf.data.label_check import warn_near_duplicate_labels
from vlmclf.data.layouts import read_caltech101, read_flowers102, read_imagenet, read_stanford_cars
from vlmclf.data.listing import (
    file_example,
    list_image_files,
    relative_id,
    require_dir,
    visible_subfolders,
)
from vlmclf.data.sources import is_source_spec, read_source, split_source_spec
from vlmclf.data.types import Dataset, Example

DEFAULT_SPLITS = {
    "imagenet": "val",
    "flowers102": "test",
    "stanford_cars": "test",
    "caltech101": "test",
    "fashion_mnist": "test",
    "imagefolder": "test",
    **{name: layout.default_split for name, layout in BENCHMARK_LAYOUTS.items()},
}
LAYOUTS = tuple(DEFAULT_SPLITS)
ALL_SPLITS = "all"
"""Split name of manifest examples (and datasets) when no split is given or filtered."""

_FIXED_CLASS_READERS = {
    "imagenet": read_imagenet,
    "flowers102": read_flowers102,
    "stanford_cars": read_stanford_cars,
    "caltech101": read_caltech101,
    **{name: layout.read for name, layout in BENCHMARK_LAYOUTS.items()},
}


def load_dataset(
    spec: str, data_root: str | None = None, split: str | None = None, classes: str | None = None
) -> Dataset:
    """Read a dataset from ``spec``: a ``.jsonl`` manifest path (optionally ``path.jsonl:split``)
    or ``NAME[:split]`` with NAME in ``LAYOUTS``, or a source at scale (``wds:PATH_OR_GLOB``,
    ``hf-dataset:PATH[:split]``, see ``vlmclf.data.sources``).

    A ``:split`` in the spec overrides ``split``; otherwise the layout's default split is used
    (``DEFAULT_SPLITS``; a manifest keeps all lines). ``classes`` (a shipped list name or a
    file) is the class list of a manifest or image folder, or replaces the names of a standard
    layout (same length required).
    """
    name, spec_split = parse_dataset_spec(spec)
    wanted_split = spec_split or split
    if name.lower().endswith(".jsonl"):
        return read_manifest(name, data_root, wanted_split, classes)
    if is_source_spec(name):
        return read_source(name, wanted_split, classes)
    if name not in LAYOUTS:
        raise ValueError(
            f"unknown dataset {name!r}: use a .jsonl manifest or one of {', '.join(LAYOUTS)}"
        )
    chosen_split = wanted_split or DEFAULT_SPLITS[name]
    if name == "fashion_mnist":
        dataset = read_fashion_mnist(data_root or FASHION_MNIST_ROOT, chosen_split)
    elif data_root is None:
        raise ValueError(
            f"dataset {name!r} reads files from disk: pass --data-root (data_root=...) "
            f"pointing at its folder"
        )
    elif name == "imagefolder":
        return read_imagefolder(data_root, chosen_split, classes)
    else:
        dataset = _FIXED_CLASS_READERS[name](data_root, chosen_split)
    return _with_class_names(dataset, classes) if classes else dataset


def parse_dataset_spec(spec: str) -> tuple[str, str | None]:
    """``'imagenet:val'`` -> ``('imagenet', 'val')``; ``'x.jsonl'`` -> ``('x.jsonl', None)``;
    ``wds:`` and ``hf-dataset:`` specs as ``vlmclf.data.sources`` splits them."""
    if is_source_spec(spec):
        return split_source_spec(spec)
    if spec.lower().endswith(".jsonl") or ":" not in spec:
        return spec, None
    name, split = spec.rsplit(":", 1)
    if not split:
        raise ValueError(f"dataset spec {spec!r} has an empty split after ':'")
    return name, split


def _with_class_names(dataset: Dataset, classes: str) -> Dataset:
    names = load_class_names(classes)
    if len(names) != len(dataset.class_names):
        raise ValueError(
            f"class list {classes!r} has {len(names)} names but {dataset.name} has "
            f"{len(dataset.class_names)} classes"
        )
    return Dataset(dataset.name, dataset.split, names, dataset.examples)


# ---------------------------------------------------------------- image folder


def read_imagefolder(root: str | Path, split: str = "test", classes: str | None = None) -> Dataset:
    """``root/<class>/<image>`` (jpg, jpeg, png, bmp, gif, webp, tif, tiff); classes = sorted
    folder names, or the ``classes`` list (each folder must then be a name in it). There are no
    split folders: every example gets ``split``; point ``root`` at the split you want."""
    root = require_dir(Path(root), "imagefolder")
    folders = visible_subfolders(root)
    if not folders:
        raise ValueError(f"imagefolder: no class folders in {root}")
    class_names = load_class_names(classes) if classes else [f.name for f in folders]
    if not classes:
        warn_near_duplicate_labels(class_names, f"imagefolder {root}")
    index: dict[str, int] = {}
    for i, name in enumerate(class_names):
        index.setdefault(name, i)
    unknown = [f.name for f in folders if f.name not in index]
    if unknown:
        raise ValueError(f"imagefolder: folders in {root} not in class list {classes!r}: {unknown}")
    examples = [
        file_example(relative_id(path, root), index[folder.name], split, path)
        for folder in folders
        for path in list_image_files(folder)
    ]
    return Dataset("imagefolder", split, class_names, examples)


# ---------------------------------------------------------------- JSONL manifest


@dataclass(frozen=True)
class ManifestRow:
    line: int
    image: str
    label: str
    split: str | None


def read_manifest(
    path: str | Path,
    data_root: str | Path | None = None,
    split: str | None = None,
    classes: str | None = None,
) -> Dataset:
    """A JSONL manifest: one ``{"image": path, "label": class name, "split": ...}`` per line.

    Relative image paths resolve against ``data_root`` if given, else the manifest's folder;
    the id of an example is its image path as written. One file may appear once, however its
    path is spelt (``imgs/x.png``, ``./imgs/x.png``, absolute). The class list is ``classes``
    (shipped name or file), else the sorted unique labels of the whole manifest (all splits, so
    indices do not depend on the split); labels that look like one class spelt two ways are
    then reported as a DataWarning. ``split`` keeps only lines with that split.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise ValueError(f"manifest {manifest} does not exist")
    rows = _parse_manifest(manifest)
    class_names = load_class_names(classes) if classes else sorted({r.label for r in rows})
    if not classes:
        warn_near_duplicate_labels(class_names, str(manifest))
    index: dict[str, int] = {}
    for i, name in enumerate(class_names):
        index.setdefault(name, i)
    for row in rows:
        if row.label not in index:
            source = f"class list {classes!r}" if classes else "the class list"
            raise ValueError(f"{manifest} line {row.line}: label {row.label!r} is not in {source}")
    base = Path(data_root) if data_root is not None else manifest.parent
    selected = [r for r in rows if split is None or r.split == split]
    if split is not None and not selected:
        present = sorted({r.split or "(no split field)" for r in rows})
        raise ValueError(f"{manifest}: no lines with split {split!r} (splits present: {present})")
    examples = _manifest_examples(manifest, selected, index, base, rows)
    return Dataset(manifest.stem, split or ALL_SPLITS, class_names, examples)


def _manifest_examples(
    manifest: Path, rows: list[ManifestRow], index: dict[str, int], base: Path,
    all_rows: list[ManifestRow] | None = None,
) -> list[Example]:  # fmt: skip
    first_row: dict[str, ManifestRow] = {}
    examples = []
    keys = _location_free_keys(all_rows or rows, base)
    for row in rows:
        image = Path(row.image)
        path = image if image.is_absolute() else base / image
        same_file = os.path.realpath(path)
        if same_file in first_row:
            raise ValueError(_duplicate_image_message(manifest, row, first_row[same_file]))
        first_row[same_file] = row
        example = file_example(row.image, index[row.label], row.split or ALL_SPLITS, path)
        key = keys.get(row.image)
        examples.append(example if key is None else replace(example, key=key))
    return examples


def _location_free_keys(rows: list[ManifestRow], base: Path) -> dict[str, str]:
    """Seed keys for the absolute image paths of a manifest (relative ones are keys already):
    the path relative to ``base`` (the data root or the manifest's folder) where the image lies
    under it, else relative to the folder all the manifest's absolute images share, so that
    the same images listed from another folder or machine draw the same offered labels."""
    absolute = [row.image for row in rows if Path(row.image).is_absolute()]
    if not absolute:
        return {}
    base = Path(os.path.abspath(base))
    root = Path(os.path.commonpath([os.path.dirname(image) for image in absolute]))
    keys = {}
    for image in absolute:
        path = Path(image)
        anchor = base if path.is_relative_to(base) else root
        keys[image] = path.relative_to(anchor).as_posix()
    return keys


def _duplicate_image_message(manifest: Path, row: ManifestRow, first: ManifestRow) -> str:
    where = f"{manifest} line {row.line}: image {row.image!r}"
    if row.image == first.image:
        message = f"{where} already listed at line {first.line}"
    else:
        message = f"{where} is the same file as {first.image!r} at line {first.line}"
    if row.label != first.label:
        message += (
            f", which has label {first.label!r} where this line says {row.label!r}; "
            "one file cannot have two labels"
        )
    return message


MAX_MANIFEST_LINE_BYTES = 1 << 20
"""A manifest line holds one image's path, label and split: 1 MiB is far beyond any real one,
and reading a 1 GB line whole would take gigabytes of memory before it could be refused."""


def _bounded_lines(manifest: Path, lines: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each line; a line over ``MAX_MANIFEST_LINE_BYTES`` is an error
    naming it, found after reading at most that much of it."""
    number = 0
    while raw := lines.readline(MAX_MANIFEST_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_MANIFEST_LINE_BYTES and not raw.endswith(b"\n"):
            raise ValueError(
                f"{manifest} line {number}: longer than {MAX_MANIFEST_LINE_BYTES // 1024} KiB; "
                "a manifest line holds one image's path, label and split (is this a manifest?)"
            )
        yield number, raw


def _parse_manifest(manifest: Path) -> list[ManifestRow]:
    rows = []
    with manifest.open("rb") as lines:
        for number, raw in _bounded_lines(manifest, lines):
            text = _decode_manifest_line(manifest, number, raw)
            if text.strip():
                rows.append(_parse_manifest_line(manifest, number, text))
    if not rows:
        raise ValueError(f"manifest {manifest} has no examples")
    return rows


def _decode_manifest_line(manifest: Path, number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{manifest} line {number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
            f"{err.start + 1}); save the manifest as UTF-8"
        ) from err


def _parse_manifest_line(manifest: Path, number: int, text: str) -> ManifestRow:
    where = f"{manifest} line {number}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: invalid JSON ({err.msg})") from err
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object")
    for field in ("image", "label"):
        if field not in record:
            raise ValueError(f"{where}: missing field {field!r}")
        if not isinstance(record[field], str) or not record[field].strip():
            raise ValueError(f"{where}: field {field!r} must be a non-empty string")
    split = record.get("split")
    if split is not None and not isinstance(split, str):
        raise ValueError(f"{where}: field 'split' must be a string")
    return ManifestRow(number, record["image"], record["label"].strip(), split)


def read_json_option_file(path: str | Path, option: str) -> Any:
    """The JSON a ``--option FILE`` names (``--hierarchy``, ``--components``): a missing file or
    bad JSON is one line naming the option, or the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{option}: no file at {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
