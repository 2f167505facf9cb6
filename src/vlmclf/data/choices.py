"""K-way label sets for the closed-world setting, identical for every model and process.

The random generator is seeded from sha256(seed, example id), never from Python's ``hash``
(salted per process) or a shared stream (whose state depends on batch order), so a run that is
resumed, sharded or repeated with another model offers exactly the same choices.
"""

from __future__ import annotations

import hashlib
import random
from functools import lru_cache
from typing import Literal

from vlmclf.data.classnames import canonical_indices, unique_class_indices


def sample_choices(
    label: int,
    class_names: list[str],
    k: int | None,
    order: Literal["fixed", "random"],
    seed: int,
    example_id: str,
) -> list[int]:
    """The true label plus k-1 other distinct names, as class indices.

    Only canonical indices are offered (never two indices with the same name); the true
    label's canonical index stands for it, so a duplicated ImageNet label (e.g. 744 "missile")
    appears as 657. ``k=None`` or ``k`` >= the number of distinct names offers every distinct
    name. ``fixed`` returns the choices in index order, ``random`` in a shuffled order.
    """
    if k is not None and k < 2:
        raise ValueError(f"k must be at least 2 (or None for all classes), got {k}")
    if order not in ("fixed", "random"):
        raise ValueError(f"order must be 'fixed' or 'random', got {order!r}")
    if not 0 <= label < len(class_names):
        raise ValueError(f"label {label} is outside the class list of {len(class_names)} names")
    canonical, unique, position = _choice_tables(tuple(class_names))
    true_index = canonical[label]
    rng = random.Random(stable_seed(seed, example_id))
    if k is None or k >= len(unique):
        chosen = list(unique)
    else:
        # Draw k-1 positions among the other names, skipping the true name's position: O(k).
        skip = position[true_index]
        picks = rng.sample(range(len(unique) - 1), k - 1)
        chosen = [true_index, *(unique[p + (p >= skip)] for p in picks)]
    if order == "fixed":
        return sorted(chosen)
    rng.shuffle(chosen)
    return chosen


@lru_cache(maxsize=16)
def _choice_tables(
    class_names: tuple[str, ...],
) -> tuple[tuple[int, ...], tuple[int, ...], dict[int, int]]:
    """Canonical index per class, the distinct-name indices, and each one's position."""
    canonical = tuple(canonical_indices(list(class_names)))
    unique = tuple(unique_class_indices(list(class_names)))
    return canonical, unique, {index: pos for pos, index in enumerate(unique)}


def stable_seed(seed: int, example_id: str) -> int:
    """A 64-bit seed from sha256 of (seed, example id): the same in every process."""
    digest = hashlib.sha256(f"{seed}\x1f{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")
