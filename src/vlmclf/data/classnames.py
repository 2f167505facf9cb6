"""Class-name lists: the shipped benchmark lists, user files, and duplicate-name handling.

ImageNet's cleaned names contain two duplicates ("missile" at 657 and 744, "sunglasses" at 836
and 837). A prompt can only offer a name once, so everything that builds choices works on
*canonical* indices: each index maps to the first index carrying the same name.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

CLASS_LISTS = (
    "imagenet", "flowers102", "stanford_cars", "caltech101", "fashion_mnist",
    "imagenet_first_synonym",
    "oxford_pets", "cub200", "fgvc_aircraft", "fgvc_aircraft_family",
    "fgvc_aircraft_manufacturer", "food101", "stanford_dogs", "dtd", "sun397", "cifar10",
    "cifar100", "imagenet_r", "imagenet_a",
)  # fmt: skip
"""``imagenet_first_synonym``: the companion thesis's ImageNet names, the first comma-separated
synonym of the standard ImageNet-1k label text (the WordNet lemmas of each synset, as timm's
``imagenet_synset_to_lemma.txt`` lists them): "tench", "great white shark", "crane" twice."""


def load_class_names(name_or_path: str) -> list[str]:
    """A shipped list by name (see ``CLASS_LISTS``), or a file: a JSON list of strings, or
    plain text with one name per line (blank lines skipped)."""
    if name_or_path in CLASS_LISTS:
        return list(_shipped_list(name_or_path))
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"class list {name_or_path!r} is neither a shipped list "
            f"({', '.join(CLASS_LISTS)}) nor an existing file"
        )
    return _read_class_file(path)


@cache
def _shipped_list(name: str) -> tuple[str, ...]:
    text = resources.files("vlmclf.data").joinpath("classnames", f"{name}.json").read_text("utf-8")
    return tuple(_validate_names(json.loads(text), f"shipped list {name}"))


def _read_class_file(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON class list ({err})") from err
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    return _validate_names(names, str(path))


def _validate_names(names: object, where: str) -> list[str]:
    if not isinstance(names, list) or not names:
        raise ValueError(f"{where}: expected a non-empty list of class names")
    for position, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: entry {position} is not a non-empty string: {name!r}")
    return [name.strip() for name in names]


def canonical_indices(class_names: list[str]) -> list[int]:
    """For each index, the first index with the same name (itself when the name is unique)."""
    return list(_canonical(tuple(class_names)))


def unique_class_indices(class_names: list[str]) -> list[int]:
    """The canonical indices in order: one index per distinct name."""
    return [i for i, c in enumerate(_canonical(tuple(class_names))) if i == c]


@lru_cache(maxsize=32)
def _canonical(class_names: tuple[str, ...]) -> tuple[int, ...]:
    first: dict[str, int] = {}
    return tuple(first.setdefault(name, i) for i, name in enumerate(class_names))
