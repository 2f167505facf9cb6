"""Labels that are probably one class written two ways ("Golden retriever", "golden  retriever",
"golden retreiver"). A class list built from a manifest's labels turns each spelling into its own
class, silently; these checks find such pairs so the reader can warn, listing them."""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from itertools import combinations

MIN_EDIT_LENGTH = 4
"""Names shorter than this are not compared by edit ("cat" and "bat" are both real classes)."""

MAX_LISTED_PAIRS = 20


class DataWarning(UserWarning):
    """Data that is usable but probably not what its author meant; the CLI prints these."""


def spelling_key(name: str) -> str:
    """The name with case, spaces, underscores and hyphens folded away."""
    return re.sub(r"[\s_\-]+", " ", name.casefold()).strip()


def near_duplicate_labels(names: list[str]) -> list[tuple[str, str, str]]:
    """Pairs ``(a, b, why)`` of distinct names that differ only by case or spacing, or by one
    edit (insert, delete, substitute, or swap two neighbours) of a letter. Edits touching a digit
    do not count: "2012 BMW M3" and "2012 BMW M5" are different cars."""
    unique = sorted(set(names))
    pairs: dict[tuple[str, str], str] = {}
    by_key: dict[str, list[str]] = defaultdict(list)
    for name in unique:
        by_key[spelling_key(name)].append(name)
    for group in by_key.values():
        for a, b in combinations(group, 2):
            pairs[(a, b)] = "case or spacing"
    for key_a, key_b in _one_edit_candidates(list(by_key)):
        if _is_one_letter_edit(key_a, key_b):
            for a in by_key[key_a]:
                for b in by_key[key_b]:
                    pairs.setdefault((min(a, b), max(a, b)), "one letter")
    return [(a, b, why) for (a, b), why in sorted(pairs.items())]


def warn_near_duplicate_labels(names: list[str], source: str) -> None:
    """Emit one DataWarning listing the near-duplicate pairs of ``names`` (none: no warning)."""
    pairs = near_duplicate_labels(names)
    if not pairs:
        return
    listed = "; ".join(f"{a!r} ~ {b!r} ({why})" for a, b, why in pairs[:MAX_LISTED_PAIRS])
    more = f"; and {len(pairs) - MAX_LISTED_PAIRS} more" if len(pairs) > MAX_LISTED_PAIRS else ""
    warnings.warn(
        f"{source}: {len(pairs)} label pair(s) look like one class spelt two ways, and each "
        f"spelling is its own class: {listed}{more}",
        DataWarning,
        stacklevel=2,
    )


def _one_edit_candidates(keys: list[str]) -> set[tuple[str, str]]:
    """Key pairs that share a one-deletion variant (every pair at edit distance 1 does), found
    through a dictionary instead of comparing all n² pairs (ImageNet has 1000 names)."""
    by_deletion: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        if len(key) < MIN_EDIT_LENGTH:
            continue
        variants = {key} | {key[:i] + key[i + 1 :] for i in range(len(key))}
        for variant in variants:
            by_deletion[variant].append(key)
    found: set[tuple[str, str]] = set()
    for group in by_deletion.values():
        for a, b in combinations(sorted(set(group)), 2):
            found.add((a, b))
    return found


def _is_one_letter_edit(a: str, b: str) -> bool:
    """True when a and b differ by exactly one edit of letters (no digit involved)."""
    if len(a) > len(b):
        a, b = b, a
    start = 0
    while start < len(a) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and a[end_a - 1] == b[end_b - 1]:
        end_a, end_b = end_a - 1, end_b - 1
    changed = a[start:end_a] + b[start:end_b]
    if any(c.isdigit() for c in changed):
        return False
    if len(b) == len(a) + 1:
        return end_a == start  # one insertion
    if len(a) != len(b):
        return False
    if end_a - start == 1:
        return True  # one substitution
    return end_a - start == 2 and a[start] == b[start + 1] and a[start + 1] == b[start]
