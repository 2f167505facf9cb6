"""Lettered multiple choice (``--format mc``): options as "A. name" lines, the reply read by the
MMMU benchmark's rule, which the paper's evaluation used (also ``vlmclf wikiqa --parser mmmu``).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
"""LLaVA's multiple-choice instruction (MMBench, ScienceQA)."""
_LETTER = "ABCD"


def option_letters(count: int) -> list[str]:
    """A, B, C, ... for ``count`` options (at most 26)."""
    if not 1 <= count <= len(string.ascii_uppercase):
        raise ValueError(f"lettered options take 1 to 26 choices, got {count}")
    return list(string.ascii_uppercase[:count])


def lettered_options(choice_names: list[str]) -> str:
    """The options block: one "X. name" line per offered name, then the instruction."""
    lines = [f"{letter}. {name}" for letter, name in
             zip(option_letters(len(choice_names)), choice_names, strict=True)]  # fmt: skip
    return "\n".join([*lines, MC_INSTRUCTION])


_MMMU_STRIPPED = ",.!?;:'"


def parse_choice_mmmu(answer: str | None, options: Mapping[str, str]) -> str | None:
    """The letter the paper's evaluation reads (the MMMU benchmark's rule), or None where that
    rule falls back to a random letter (``vlmclf wikiqa --protocol paper`` draws one; ``eval
    --format mc`` leaves the answer unparsed, counted wrong).

    Candidates, first kind found wins: letters written "(X)"; else letters standing between
    spaces; else, for answers of more than five words, options whose text occurs anywhere in
    the answer (case-insensitive). Of several candidates the one mentioned last wins. Looser
    than ``vlmclf.analysis.wikiqa.parse.parse_choice``: "I think A or B, probably B" reads as
    B, and any word "A" counts.
    """
    text = answer or ""
    for mark in _MMMU_STRIPPED:  # one mark at a time, as the rule does ("B,." keeps its ",")
        text = text.strip(mark)
    text = f" {text} "
    letters = list(options) or list(_LETTER)
    bracketed = [x for x in letters if f"({x})" in text]
    if bracketed:
        return _mentioned_last(bracketed, lambda x: text.rfind(f"({x})"))
    spaced = [x for x in letters if f" {x} " in text]
    if spaced:
        return _mentioned_last(spaced, lambda x: text.rfind(f" {x} "))
    if len(text.split()) <= 5:
        return None
    lowered = text.lower()
    by_text = [x for x in letters if options.get(x) and options[x].lower() in lowered]
    if by_text:
        return _mentioned_last(by_text, lambda x: lowered.rfind(options[x].lower()))
    return None


def _mentioned_last(candidates: list[str], position: Callable[[str], int]) -> str:
    """The candidate whose last mention starts latest (the first of equals)."""
    positions = [position(x) for x in candidates]
    return candidates[positions.index(max(positions))]


