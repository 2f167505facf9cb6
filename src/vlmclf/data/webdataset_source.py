"""``wds:PATH_OR_GLOB``: WebDataset tar shards in CLIP_benchmark's layout.

CLIP_benchmark ships each dataset as ``ROOT/classnames.txt`` (one name per line, the line number
is the label), an optional ``ROOT/zeroshot_classification_templates.txt`` and ``ROOT/<split>/
*.tar`` shards in which each sample is ``KEY.<image ext>`` + ``KEY.cls`` (the label as text).
PATH_OR_GLOB is that ROOT (the split folder is ``--split``, default ``test``), a split folder,
one shard, a glob (``shards/*.tar``) or WebDataset's brace notation (``shard-{000..099}.tar``,
several patterns joined by ``::``), expanded by ``webdataset`` itself.

Memory stays bounded: listing walks each shard's tar headers with the standard ``tarfile``
reader (the one ``webdataset`` wraps), reading only the tiny ``.cls`` members and dropping each
header once passed, and an Example remembers where its image member's bytes start. Loading seeks
there and reads that one member, so no shard, and no decoded image beyond those being classified,
is ever held. Random access (rather than ``webdataset``'s streaming pipeline) is what lets the
runner skip the examples already stored, resume, and hand whole batches to torchrun ranks.

An example's id is ``<shard file name>/<key>``: the same however the shards are named on the
command line. Its source is ``<shard path>#<key>``, so the run identity stats the shard file and a
rewritten shard gives a new run id.
"""

from __future__ import annotations

import glob
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image

from vlmclf.data.classnames import load_class_names
from vlmclf.data.images import open_image_bytes
from vlmclf.data.optional import WDS_PREFIX, require_extra
from vlmclf.data.types import BadExampleError, Dataset, Example

DEFAULT_WDS_SPLIT = "test"
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
LABEL_EXTENSION = "cls"
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff", "gif")
"""Image members a sample may hold (webdataset's image decoder's extensions); the first found."""
_COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


def read_wds(location: str, split: str | None = None, classes: str | None = None) -> Dataset:
    """The examples of the shards ``location`` names (see the module docstring); ``classes``
    (a shipped list or a file) replaces the ``classnames.txt`` found beside the shards."""
    split = split or DEFAULT_WDS_SPLIT
    shards = shard_files(location, split)
    class_names = load_class_names(classes) if classes else load_class_names(
        str(_beside_shards(shards, CLASSNAMES_FILE, required=True))
    )  # fmt: skip
    examples: list[Example] = []
    shard_of_name: dict[str, Path] = {}
    for shard in shards:
        if shard.name in shard_of_name:
            raise ValueError(
                f"wds: shards {shard_of_name[shard.name]} and {shard} have the same file name; "
                "example ids are <shard name>/<key>, so shard names must be unique"
            )
        shard_of_name[shard.name] = shard
        examples.extend(shard_examples(shard, split, len(class_names)))
    return Dataset(f"{WDS_PREFIX}{location}", split, class_names, examples)


def shard_files(location: str, split: str) -> list[Path]:
    """The shard files ``location`` names, in order: brace patterns and ``::`` lists expanded by
    webdataset, globs sorted, a folder's ``*.tar`` (or its ``<split>/`` folder's)."""
    require_extra("webdataset", "wds:", "wds")
    from webdataset.shardlists import expand_urls

    shards: list[Path] = []
    for pattern in expand_urls(location):
        shards.extend(_matching_shards(pattern, split))
    if not shards:
        raise ValueError(f"wds: no .tar shards match {location!r}")
    compressed = [s for s in shards if s.name.lower().endswith(_COMPRESSED)]
    if compressed:
        raise ValueError(
            f"wds: {compressed[0]} is compressed; examples are read by their offset in the tar, "
            "so decompress the shards (CLIP_benchmark's are plain .tar)"
        )
    return shards


def _matching_shards(pattern: str, split: str) -> list[Path]:
    if glob.has_magic(pattern):
        return [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).is_file()]
    path = Path(pattern)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"wds: {path} does not exist")
    for folder in (path, path / split):
        found = sorted(p for p in folder.glob("*.tar*") if p.is_file())
        if found:
            return found
    raise ValueError(f"wds: no .tar shards in {path} or {path / split}")


def _beside_shards(shards: list[Path], file_name: str, required: bool) -> Path | None:
    """``file_name`` in the first shard's folder or the folder above it (CLIP_benchmark's)."""
    folder = shards[0].resolve().parent
    for candidate in (folder / file_name, folder.parent / file_name):
        if candidate.is_file():
            return candidate
    if required:
        raise ValueError(
            f"wds: no {file_name} in {folder} or {folder.parent}; pass --classes with the "
            "class list (one name per line, line i is label i)"
        )
    return None


# ---------------------------------------------------------------- one shard


@dataclass(frozen=True)
class _Member:
    offset: int
    size: int
    text: str = ""
    """The member's content, for the label (``.cls``) only."""


def shard_examples(shard: Path, split: str, n_classes: int) -> Iterator[Example]:
    """The samples of one shard, in tar order, as Examples that read their image on ``load()``.

    Raises ValueError naming the shard and key for a sample without a label or an image, a
    label that is not a class index, or a key seen twice (its members not consecutive).
    """
    from webdataset.tariterators import base_plus_ext

    done: set[str] = set()
    for key, members in _samples(shard, base_plus_ext):
        where = f"{shard} sample {key!r}"
        if key in done:
            raise ValueError(f"{where}: the key appears twice (its files are not consecutive)")
        done.add(key)
        label = _label(shard, members, where, n_classes)
        image = next((e for e in WDS_IMAGE_EXTENSIONS if e in members), None)
        if image is None:
            raise ValueError(
                f"{where}: no image ({', '.join('.' + e for e in WDS_IMAGE_EXTENSIONS)}); "
                f"it has {', '.join('.' + e for e in sorted(members))}"
            )
        member = members[image]
        yield Example(
            id=f"{shard.name}/{key}",
            label=label,
            split=split,
            source=f"{shard}#{key}",
            loader=partial(tar_member_image, str(shard), member.offset, member.size,
                           f"{shard}#{key}.{image}"),
        )  # fmt: skip


def _samples(
    shard: Path, split_name: Callable[[str], tuple[str | None, str | None]]
) -> Iterator[tuple[str, dict[str, _Member]]]:
    """(key, {extension: member}) per sample: consecutive members sharing a key, as webdataset
    groups them. Only headers are read; each TarInfo is dropped once grouped."""
    try:
        tar = tarfile.open(shard, mode="r:")  # noqa: SIM115 - closed by the with below
    except tarfile.TarError as err:
        raise ValueError(f"wds: {shard} is not an uncompressed tar file ({err})") from err
    with tar:
        key: str | None = None
        members: dict[str, _Member] = {}
        for info in tar:
            base, extension = split_name(info.name)
            tar.members = []  # what webdataset does too: keep no header once read
            if not info.isfile() or base is None or base.startswith("__"):
                continue
            if base != key and key is not None:
                yield key, members
                members = {}
            key = base
            is_label = extension.lower() == LABEL_EXTENSION
            text = _read(tar, info) if is_label else ""
            members[extension.lower()] = _Member(info.offset_data, info.size, text)
        if key is not None:
            yield key, members


def _read(tar: tarfile.TarFile, info: tarfile.TarInfo) -> str:
    """A small member's text (the label), stripped."""
    stream = tar.extractfile(info)
    return "" if stream is None else stream.read().decode("utf-8", "replace").strip()


def _label(shard: Path, members: dict[str, _Member], where: str, n_classes: int) -> int:
    if LABEL_EXTENSION not in members:
        raise ValueError(f"{where}: no .{LABEL_EXTENSION} file (the class index)")
    text = members[LABEL_EXTENSION].text
    if not text.isdigit():
        raise ValueError(f"{where}: .{LABEL_EXTENSION} holds {text!r}, not a class index")
    label = int(text)
    if label >= n_classes:
        raise ValueError(
            f"{where}: label {label} is outside the class list of {n_classes} names"
        )
    return label


def tar_member_image(shard: str, offset: int, size: int, name: str) -> Image.Image:
    """The image stored at ``offset`` in ``shard``: one seek and one read of ``size`` bytes."""
    try:
        with open(shard, "rb") as file:
            file.seek(offset)
            data = file.read(size)
    except OSError as err:
        raise BadExampleError(f"{name}: cannot read the shard ({err})") from err
    if len(data) < size:
        raise BadExampleError(f"{name}: truncated shard ({len(data)} of {size} bytes)")
    return open_image_bytes(data, name)
