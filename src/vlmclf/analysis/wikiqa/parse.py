"""Reading a lettered choice (A-D) out of a free-form answer.

Models answer "B", "b)", "Answer: B", "(C)", "The answer is D.", "**A**", "B. Upright position" or
just the option's text. ``parse_choice`` accepts all of these and returns None, never a guess,
when the answer names no option or names several without saying which one is the answer
(reported as ``n_unparsed``; they count as wrong, or under ``--protocol paper`` get the random
letter the original code gave them, see ``run.random_letters_for_unparsed``). Rules, first that
applies wins:

1. an explicit statement: "answer is C", "Answer: (C)", "correct option: C", "choice C";
2. the whole answer is one letter, optionally bracketed or followed by ".", ")" or ":";
3. the answer starts with a letter followed by ".", ")" or ":" ("B. Upright position") and
   lists no other lettered option;
4. bracketed letters "(C)" / "[C]" / "C)" that all name the same letter;
5. the text of exactly one option (the longest one when one option's text contains another's);
6. standalone capital letters that all name the same letter ("I would say B"); a capital "A"
   that starts a phrase ("A dog") is read as the article, not as a choice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from vlmclf.methods.letters import parse_choice_mmmu

_LETTER = "ABCD"
_EXPLICIT = re.compile(
    r"(?i:\b(?:the\s+)?(?:correct\s+|best\s+|final\s+)?(?:answer|option|choice)"
    r"(?:\s+(?:is|would\s+be|should\s+be|will\s+be))?\s*[:=\-]?\s*(?:option\s+|choice\s+)?)"
    r"[\(\[]?([A-D])(?![A-Za-z0-9'])"
)
_EXPLICIT_LOWER = re.compile(
    r"(?i:\b(?:answer|option|choice)(?:\s+is)?\s*[:=\-]?\s*)[\(\[]?([a-d])(?:[\)\]]|\.?\s*$)"
)
_WHOLE = re.compile(r"^[\(\[]?([A-Da-d])[\)\]]?[.:]?$")
_LEADING = re.compile(r"^[\(\[]?([A-D])(?:[\)\]][.:]?|[.:])(?:\s|$)")
_BRACKETED = re.compile(r"(?:[\(\[]([A-D])[\)\]])|(?:(?<![A-Za-z0-9'])([A-D])\))")
_LISTED = re.compile(r"(?:^|\s)([A-D])[.:](?:\s|$)")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'\-])([A-D])(?![A-Za-z0-9'\-])")
_ARTICLE = re.compile(r"\s+[a-z]")


def parse_choice(answer: str | None, options: Mapping[str, str]) -> str | None:
    """The letter the answer picks among ``options`` ({letter: text}), or None if unclear."""
    if not answer:
        return None
    text = _clean(answer)
    if not text:
        return None
    letters = set(options) or set(_LETTER)
    for rule in (_explicit, _whole, _leading, _bracketed):
        found = rule(text)
        if found is not None:
            return found if found in letters else None
    by_text = _option_text(text, options)
    if by_text is not None:
        return by_text
    found = _standalone(text)
    return found if found in letters else None


def _clean(answer: str) -> str:
    """Markdown emphasis and surrounding quotes removed, whitespace collapsed."""
    text = re.sub(r"[*_`]+", "", answer)
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip("\"' ")


def _explicit(text: str) -> str | None:
    found = _EXPLICIT.search(text) or _EXPLICIT_LOWER.search(text)
    return found.group(1).upper() if found else None


def _whole(text: str) -> str | None:
    found = _WHOLE.match(text)
    return found.group(1).upper() if found else None


def _leading(text: str) -> str | None:
    """A leading letter, unless the answer goes on to list other lettered options ("A) x B) y")."""
    found = _LEADING.match(text)
    if not found:
        return None
    others = {a or b for a, b in _BRACKETED.findall(text)} | set(_LISTED.findall(text))
    return found.group(1) if others <= {found.group(1)} else None


def _bracketed(text: str) -> str | None:
    found = {a or b for a, b in _BRACKETED.findall(text)}
    return found.pop() if len(found) == 1 else None


def _option_text(text: str, options: Mapping[str, str]) -> str | None:
    lowered = f" {_words(text)} "
    hits = [
        (letter, _words(option))
        for letter, option in options.items()
        if _words(option) and f" {_words(option)} " in lowered
    ]
    # An option whose text lies inside another matched option's text is not a separate answer.
    kept = [(letter, words) for letter, words in hits if not any(
        words != other and f" {words} " in f" {other} " for _, other in hits)]  # fmt: skip
    return kept[0][0] if len(kept) == 1 else None


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _standalone(text: str) -> str | None:
    found = set()
    for match in _STANDALONE.finditer(text):
        letter = match.group(1)
        if letter == "A" and _ARTICLE.match(text, match.end()):
            continue
        found.add(letter)
    return found.pop() if len(found) == 1 else None


PARSERS = ("robust", "mmmu")
def parser_for(name: str) -> Callable[[str | None, Mapping[str, str]], str | None]:
    """``robust`` (``parse_choice``, the clean protocol) or ``mmmu`` (the paper's code)."""
    if name not in PARSERS:
        raise ValueError(f"--parser must be one of {', '.join(PARSERS)}, got {name!r}")
    return parse_choice if name == "robust" else parse_choice_mmmu
