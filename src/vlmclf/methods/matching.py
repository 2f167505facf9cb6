"""Map free-form answers back to the label set.

Two rules, both case-insensitive: the paper's containment (the ground-truth name appears anywhere
in the answer) decides ``hit``; the strict rule finds the longest class name that occurs at word
boundaries (so "tiger cat" is not read as "cat") and gives the one predicted label.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache


def contains_name(text: str, name: str) -> bool:
    """The paper's success rule: the class name appears in the output, case-insensitive."""
    return name.lower() in text.lower()


@lru_cache(maxsize=16384)
def _word_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(name.lower())}(?!\w)")


def match_label(
    text: str, class_names: Sequence[str], candidates: Sequence[int] | None = None
) -> int | None:
    """The index of the longest candidate name found at word boundaries, or None.

    Ties in length go to the name that occurs first in the text. Duplicate names resolve to their
    first index. ``candidates`` restricts the search (the offered choices in the closed world).
    """
    lowered = text.lower()
    indices = range(len(class_names)) if candidates is None else candidates
    best: tuple[int, int, int] | None = None  # (-length, position, index)
    for index in indices:
        name = class_names[index].lower()
        if not name or name not in lowered:
            continue
        found = _word_pattern(name).search(lowered)
        if found is None:
            continue
        key = (-len(name), found.start(), index)
        if best is None or key < best:
            best = key
    if best is None:
        return None
    return list(class_names).index(class_names[best[2]])
