"""``hf-dataset:PATH[:split]``: a local Hugging Face dataset, as ``save_to_disk`` wrote it or as
Parquet files (the hub's ``data/<split>-00000-of-00001.parquet`` layout, a folder, one file or
a glob).

Both are opened with ``datasets`` (``load_from_disk``, ``Dataset.from_parquet``), whose tables
are memory-mapped Arrow: nothing is read until a row is asked for, and each Example reads its
own row's encoded image bytes (never the decoded column) when it is loaded. Labels come from the
first ``ClassLabel`` column (its names are the class list) or a ``label`` / ``labels`` column
with ``--classes`` (integer indices into it, or the names themselves).

An example's id is ``<split>/<row>``; its source is the data file (Arrow or Parquet) that holds
the row plus the row's place in it, so the run identity stats the dataset's own files and a
rewritten dataset gives a new run id.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from vlmclf.data.classnames import load_class_names
from vlmclf.data.images import open_image_bytes
from vlmclf.data.optional import HF_PREFIX, require_extra
from vlmclf.data.types import BadExampleError, Dataset, Example

DEFAULT_HF_SPLIT = "test"
LABEL_COLUMNS = ("label", "labels")
IMAGE_COLUMNS = ("image", "img")
_LABEL_BATCH = 65_536


def read_hf_dataset(location: str, split: str | None = None, classes: str | None = None) -> Dataset:
    """The examples of split ``split`` (default: ``test``, else the only split) of the dataset
    at ``location``; ``classes`` names the classes of a plain label column, or replaces the
    names of a ``ClassLabel`` one (same length)."""
    require_extra("datasets", HF_PREFIX, "hf")
    path = Path(location)
    if not glob.has_magic(location) and not path.exists():
        raise ValueError(f"hf-dataset: {path} does not exist")
    if path.is_dir() and _is_saved_dataset(path):
        table, split, files = _saved_split(path, split)
    else:
        table, split, files = _parquet_split(location, split)
    image_column = _image_column(table, location)
    labels, class_names = _labels_and_classes(table, location, classes)
    rows = table.select_columns([image_column]).with_format("arrow")
    sources = _row_sources(files, len(table))
    examples = [
        Example(
            id=f"{split}/{row}", label=label, split=split, source=source,
            loader=partial(arrow_row_image, rows, row, image_column, source),
        )  # fmt: skip
        for row, (label, source) in enumerate(zip(labels, sources, strict=True))
    ]
    return Dataset(f"{HF_PREFIX}{location}", split, class_names, examples)


# ---------------------------------------------------------------- opening


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _saved_split(path: Path, split: str | None) -> tuple[Any, str, list[tuple[Path, int]]]:
    """A ``save_to_disk`` folder: a DatasetDict (pick the split) or one Dataset."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        split = _chosen_split(path, split, list(loaded))
        table = loaded[split]
    else:
        table = loaded
        split = split or str(table.split or DEFAULT_HF_SPLIT)
    files = [(Path(f["filename"]), _arrow_rows(Path(f["filename"]))) for f in table.cache_files]
    return table, split, files


def _arrow_rows(path: Path) -> int:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return sum(batch.num_rows for batch in pa.ipc.open_stream(source))


def _parquet_split(location: str, split: str | None) -> tuple[Any, str, list[tuple[Path, int]]]:
    """Parquet files, grouped by the split their name or folder says (``test-0000.parquet``,
    ``test/x.parquet``); files that name no split form one split, ``split`` or ``test``."""
    import datasets
    import pyarrow.parquet as pq

    found = _parquet_files(location)
    by_split: dict[str, list[Path]] = {}
    for file in found:
        by_split.setdefault(_split_of(file) or split or DEFAULT_HF_SPLIT, []).append(file)
    split = _chosen_split(Path(location), split, list(by_split))
    files = by_split[split]
    quiet = not datasets.utils.are_progress_bars_disabled()
    if quiet:  # converting to the Arrow cache draws a bar per call: not ours to show
        datasets.utils.disable_progress_bars()
    try:
        table = datasets.Dataset.from_parquet([str(f) for f in files], split=split)
    finally:
        if quiet:
            datasets.utils.enable_progress_bars()
    return table, split, [(f, pq.ParquetFile(f).metadata.num_rows) for f in files]


def _parquet_files(location: str) -> list[Path]:
    path = Path(location)
    if glob.has_magic(location):
        found = [Path(p) for p in sorted(glob.glob(location))]
    elif path.is_file():
        found = [path]
    else:
        found = sorted(path.rglob("*.parquet"))
    if not found:
        raise ValueError(
            f"hf-dataset: {location} is not a save_to_disk folder (no dataset_dict.json or "
            "state.json) and holds no .parquet files"
        )
    return found


def _split_of(file: Path) -> str | None:
    """``test-00000-of-00001.parquet`` -> test; ``test/0.parquet`` -> test; else None."""
    stem = file.name.removesuffix(".parquet")
    for name in (stem.split("-", 1)[0], file.parent.name):
        if name in ("train", "test", "validation", "val", "valid", "dev"):
            return name
    return None


def _chosen_split(path: Path, split: str | None, present: list[str]) -> str:
    if split is None:
        split = present[0] if len(present) == 1 else DEFAULT_HF_SPLIT
    if split not in present:
        listed = ", ".join(present)
        raise ValueError(f"hf-dataset: {path} has no split {split!r} (splits: {listed})")
    return split


# ---------------------------------------------------------------- columns


def _image_column(table: Any, location: str) -> str:
    import datasets

    for name, feature in table.features.items():
        if isinstance(feature, datasets.Image):
            return name
    for name in IMAGE_COLUMNS:
        if name in table.features:
            return name
    raise ValueError(
        f"hf-dataset: {location} has no image column (an Image feature, or one named "
        f"{' or '.join(IMAGE_COLUMNS)}); columns: {', '.join(table.column_names)}"
    )


def _labels_and_classes(
    table: Any, location: str, classes: str | None
) -> tuple[list[int], list[str]]:
    """Label indices and the class list they index into (see the module docstring)."""
    import datasets

    column = next(
        (n for n, f in table.features.items() if isinstance(f, datasets.ClassLabel)), None
    )
    if column is not None:
        names = list(table.features[column].names)
        if classes:
            names = _same_length(load_class_names(classes), names, classes, location)
        return _column_values(table, column), names
    column = next((n for n in LABEL_COLUMNS if n in table.features), None)
    if column is None:
        raise ValueError(
            f"hf-dataset: {location} has no ClassLabel column and no column named "
            f"{' or '.join(LABEL_COLUMNS)}; columns: {', '.join(table.column_names)}"
        )
    values = _column_values(table, column)
    if all(isinstance(v, str) for v in values):
        names = load_class_names(classes) if classes else sorted(set(values))
        return _indices_of_names(values, names, location, column), names
    if not classes:
        raise ValueError(
            f"hf-dataset: {location} column {column!r} holds class indices but no class names "
            "(it is not a ClassLabel); pass --classes"
        )
    names = load_class_names(classes)
    for row, value in enumerate(values):
        if not isinstance(value, int) or not 0 <= value < len(names):
            raise ValueError(
                f"hf-dataset: {location} row {row}: {column} {value!r} is not a class index "
                f"into the {len(names)} names of {classes!r}"
            )
    return values, names


def _column_values(table: Any, column: str) -> list[Any]:
    """One column as Python values, read in batches (never the other columns)."""
    values: list[Any] = []
    for batch in table.select_columns([column]).iter(batch_size=_LABEL_BATCH):
        values.extend(batch[column])
    return values


def _indices_of_names(values: list[str], names: list[str], location: str, column: str) -> list[int]:
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)
    for row, value in enumerate(values):
        if value not in index:
            raise ValueError(
                f"hf-dataset: {location} row {row}: {column} {value!r} is not in the class list"
            )
    return [index[value] for value in values]


def _same_length(names: list[str], own: list[str], classes: str, location: str) -> list[str]:
    if len(names) != len(own):
        raise ValueError(
            f"class list {classes!r} has {len(names)} names but {location} has {len(own)} classes"
        )
    return names


def _row_sources(files: Sequence[tuple[Path, int]], n_rows: int) -> list[str]:
    """``<data file>#<row in that file>`` for every row, the files in table order."""
    sources = [f"{file}#{i}" for file, count in files for i in range(count)]
    if len(sources) != n_rows:
        raise ValueError(
            f"hf-dataset: the data files hold {len(sources)} rows but the table has {n_rows}"
        )
    return sources


# ---------------------------------------------------------------- loading


def arrow_row_image(rows: Any, row: int, column: str, name: str) -> Image.Image:
    """Row ``row``'s image, decoded from its stored bytes (or the file its cell points at)."""
    try:
        cell = rows[row][column][0].as_py()
    except (OSError, IndexError) as err:
        raise BadExampleError(f"{name}: cannot read the row ({err})") from err
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
    else:
        data, path = cell, None
    if data is None and path:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise BadExampleError(f"{name}: image file {path} cannot be read ({err})") from err
    if not isinstance(data, bytes):
        raise BadExampleError(f"{name}: no image bytes in column {column!r}")
    return open_image_bytes(data, name)
