"""Helpers shared by the readers: listing image files and building lazy file Examples.

Readers only list files; nothing is decoded until ``Example.load()``, so one bad file becomes
one failed example instead of a failed dataset. Loaders are ``functools.partial`` objects of
module-level functions, so Examples pickle into worker processes.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from vlmclf.data.images import is_image_name, open_image
from vlmclf.data.types import Example


def file_example(example_id: str, label: int, split: str, path: Path) -> Example:
    """An Example whose image is the file at ``path``, opened only on ``load()``."""
    return Example(
        id=example_id, label=label, split=split, source=str(path), loader=partial(open_image, path)
    )


def list_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted, hidden entries skipped).

    Files are chosen by extension only: a text file named ``x.jpg`` is listed and fails later,
    in ``Example.load()``, as it should.
    """
    found = [
        path
        for path in folder.rglob("*")
        if is_image_name(path)
        and not _is_hidden(path.relative_to(folder))
        and (path.is_file() or not path.exists())
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def visible_subfolders(folder: Path) -> list[Path]:
    """Immediate sub-directories of ``folder`` whose names do not start with a dot, sorted."""
    return sorted(
        (entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
        key=lambda p: p.name,
    )


def relative_id(path: Path, base: Path) -> str:
    """A stable example id: the path relative to ``base``, with forward slashes."""
    return path.relative_to(base).as_posix()


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ValueError(f"{what}: folder {path} does not exist")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ValueError(f"{what}: file {path} does not exist")
    return path


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)
