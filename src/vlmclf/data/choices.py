"""K-way label sets for the closed-world setting, identical for every model and process.

``sample_choices`` (the clean protocol) seeds each example's generator from sha256(seed,
example key), never from Python's ``hash`` (salted per process) or a shared stream, so a run
that is resumed, sharded or repeated with another model offers exactly the same choices. The key
is location-independent (``Example.seed_key``): a dataset copied elsewhere is offered the same.

``paper_stream_choices`` is the paper's code instead: one global ``random`` stream, the split
shuffled with seed 1234, then each image's labels drawn in that order. The lists are computed
for every position up front, so a resumed or sharded run offers what one uninterrupted run of
the paper's script offers.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Sequence
from functools import lru_cache
from typing import Literal

from vlmclf.data.classnames import canonical_indices, unique_class_indices
from vlmclf.data.types import Example

PAPER_STREAM_SEED = 1234
"""main_results/main.py's ``--seed`` default: ``random.seed(seed); random.shuffle(data)``."""


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


def paper_stream_choices(
    examples: Sequence[Example],
    class_names: list[str],
    k: int | None,
    wanted: Collection[str],
    seed: int = PAPER_STREAM_SEED,
) -> dict[str, list[int]]:
    """The offered labels of the paper's ``main()`` for the ``wanted`` example ids, as class
    indices in the offered order.

    ``examples`` is the whole split in reading order (a manifest's lines), as the paper reads
    it; the stream is simulated up to the last wanted position only. Per image: the true name,
    then ``random.sample(sorted(set(names) - {name}), k - 1)``, the list shuffled; ``k=None``
    offers every distinct name. A name offered stands for its first index (ImageNet's
    duplicated names merge, as the paper's ``classes.index`` does)."""
    rows = list(examples)
    rng = random.Random(seed)  # = random.seed(seed), the module's global stream
    rng.shuffle(rows)
    distinct = sorted(set(class_names))
    n_labels = len(distinct) if k is None else k
    if not 2 <= n_labels <= len(distinct):
        raise ValueError(f"k must be in [2, {len(distinct)}], got {k}")
    first = {name: class_names.index(name) for name in distinct}
    others = {name: [n for n in distinct if n != name] for name in distinct}
    left = set(wanted)
    out: dict[str, list[int]] = {}
    for row in rows:
        if not left:
            break
        name = class_names[row.label]
        chosen = [name, *rng.sample(others[name], n_labels - 1)]
        rng.shuffle(chosen)
        if row.id in left:
            out[row.id] = [first[n] for n in chosen]
            left.discard(row.id)
    return out
