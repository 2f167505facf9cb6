"""How often does each class name appear in a model's training data? (paper, Section 4.3, Fig. 3)

A class *occurs* in a text unit (a caption, a conversation turn) when its normalised token
sequence is a contiguous sub-sequence of the unit's tokens: the paper's sub-list match, made
boundary-safe (the paper's helper never matches at a unit's first or last token), so
"tiger cat" in a caption counts for the class "tiger cat" and also for a class "cat". We count
UNITS that mention a class (at most once per unit), not occurrences.

Normalisation, applied identically to corpus text and to class names (:func:`tokenize`): Unicode
NFKC, case folding, then tokens are the maximal runs of letters and digits. Every other character
separates tokens, so hyphens and apostrophes are word breaks: "T-shirt", "t-shirt" and "t shirt"
all read ``t shirt``; "cat's" reads ``cat s`` (still a mention of "cat"); "tshirt" and "potters"
do not match "T-shirt" or "potter's wheel".

A class name gives one or more surface forms (:func:`class_name_variants`): text in parentheses is
a disambiguator that captions do not write ("kite (bird of prey)" -> ``kite``) and is dropped;
"/" separates alternatives ("T-shirt/top" -> ``t shirt`` or ``top``; "baluster / handrail"). A unit
mentioning any form of a class counts once for it.

Counting is one Aho-Corasick pass over batches of normalised units (patterns are " tok1 tok2 "
over " tok tok ... " text, so matches fall on token boundaries); :func:`naive_count` is the plain
sub-list scan kept as the reference that the fast path is tested against.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import accumulate, islice
from pathlib import Path
from typing import Any

import ahocorasick
import numpy as np

from vlmclf.analysis.frequency.corpus import ReadStats, iter_units
from vlmclf.analysis.frequency.stats import (
    binned_accuracy,
    correlate,
    plot_frequency_vs_accuracy,
    write_frequency_table,
)

__all__ = [
    "FrequencyResult",
    "ClassMatcher",
    "binned_accuracy",
    "class_name_variants",
    "correlate",
    "count_class_mentions",
    "naive_count",
    "plot_frequency_vs_accuracy",
    "run_frequency_analysis",
    "tokenize",
    "write_frequency_table",
]

_TOKEN = re.compile(r"[^\W_]+")
_NON_WORD_RUN = re.compile(r"[^\w\x00]+")  # keeps \x00, the unit separator of a batch
# ASCII fast path of the same normalisation: A-Z -> a-z, every other non-alphanumeric byte but
# \x00 -> space (NFKC and case folding of ASCII are exactly this).
_ASCII_FOLD = bytes(
    b + 32 if 65 <= b <= 90 else b if (48 <= b <= 57 or 97 <= b <= 122 or b == 0) else 32
    for b in range(256)
)
_PARENTHESISED = re.compile(r"\([^()]*\)")
_SEP = "\x00"
BATCH_UNITS = 8192


def _fold(text: str) -> str:
    """Character-level normalisation. Context-free, so a batch folds like its units one by one."""
    return unicodedata.normalize("NFKC", text).casefold()


def _batch_text(joined: str) -> tuple[str, np.ndarray]:
    """Units joined by \x00 -> " tok tok \x00 tok ... " (single spaces) and the \x00 positions.

    Equal to tokenising each unit on its own: the steps are context-free, \x00 never composes
    under NFKC and is kept out of every token.
    """
    if joined.isascii():
        data = joined.encode("ascii").translate(_ASCII_FOLD).replace(b"\x00", b" \x00 ")
        data = b" " + b" ".join(data.split()) + b" "
        separators = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0)
        return data.decode("ascii"), separators
    folded = _NON_WORD_RUN.sub(" ", _fold(joined).replace("_", " ")).replace(_SEP, " \x00 ")
    text = " " + " ".join(folded.split()) + " "
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return text, np.flatnonzero(codepoints == 0)


def tokenize(text: str) -> list[str]:
    """Word tokens of a text or a class name: NFKC, case-folded runs of letters and digits."""
    return _TOKEN.findall(_fold(text))


def class_name_variants(name: str) -> list[tuple[str, ...]]:
    """The token sequences that count as a mention of ``name`` (see the module docstring)."""
    stripped = _PARENTHESISED.sub(" ", name)
    variants = [tuple(tokenize(alt)) for alt in stripped.split("/")]
    variants = [v for v in variants if v] or [tuple(tokenize(name))]
    if not variants[0]:
        raise ValueError(f"class name {name!r} has no letters or digits to match")
    return list(dict.fromkeys(variants))


def _unique_names(class_names: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(class_names))
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"class names must be strings, got {bad[:3]!r}")
    return names


def naive_count(units: Iterable[str], class_names: Sequence[str]) -> dict[str, int]:
    """Reference counter: for each unit and each class, a plain contiguous sub-list search."""
    names = _unique_names(class_names)
    variants = {name: class_name_variants(name) for name in names}
    counts = dict.fromkeys(names, 0)
    for unit in units:
        tokens = tokenize(unit)
        for name in names:
            if any(_contains(tokens, v) for v in variants[name]):
                counts[name] += 1
    return counts


def _contains(tokens: list[str], pattern: tuple[str, ...]) -> bool:
    n = len(pattern)
    return any(tuple(tokens[i : i + n]) == pattern for i in range(len(tokens) - n + 1))


class ClassMatcher:
    """Aho-Corasick automaton over the token sequences of a class list; counts units per class."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.names = _unique_names(class_names)
        pattern_classes: dict[str, list[int]] = {}
        for index, name in enumerate(self.names):
            for variant in class_name_variants(name):
                pattern_classes.setdefault(" " + " ".join(variant) + " ", []).append(index)
        self.automaton = ahocorasick.Automaton()
        for pid, pattern in enumerate(pattern_classes):
            self.automaton.add_word(pattern, pid)
        self.automaton.make_automaton()
        # pattern id -> class ids, as CSR arrays (one pattern may stand for several classes)
        lists = list(pattern_classes.values())
        self._indptr = np.array([0, *accumulate(len(c) for c in lists)], dtype=np.int64)
        self._indices = np.array([c for cs in lists for c in cs], dtype=np.int64)
        self.counts = np.zeros(len(self.names), dtype=np.int64)
        self.n_units = 0

    def add_batch(self, units: Sequence[str]) -> None:
        """Count one batch of units: fold and tokenise it as one string, scan it once."""
        if not units:
            return
        joined = _SEP.join(units)
        if joined.count(_SEP) != len(units) - 1:  # a unit holding \x00 itself: make it a space
            joined = _SEP.join(u.replace(_SEP, " ") for u in units)
        text, separators = _batch_text(joined)
        hits = list(self.automaton.iter(text))
        self.n_units += len(units)
        if not hits:
            return
        ends, pids = np.array(hits, dtype=np.int64).T
        unit_ids = np.searchsorted(separators, ends)  # separators before a match = its unit
        per_hit = self._indptr[pids + 1] - self._indptr[pids]
        starts = np.repeat(self._indptr[pids] - np.cumsum(per_hit) + per_hit, per_hit)
        class_ids = self._indices[starts + np.arange(per_hit.sum())]
        keys = np.unique(np.repeat(unit_ids, per_hit) * len(self.names) + class_ids)
        self.counts += np.bincount(keys % len(self.names), minlength=len(self.names))

    def add_units(self, units: Iterable[str], batch_units: int = BATCH_UNITS) -> None:
        for batch in _batched(units, batch_units):
            self.add_batch(batch)

    def as_dict(self) -> dict[str, int]:
        return {name: int(c) for name, c in zip(self.names, self.counts, strict=True)}


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


@dataclass
class FrequencyResult:
    """Units mentioning each class. ``n_bad`` counts records skipped with ``skip_bad``."""

    counts: dict[str, int]
    n_units: int
    sources: list[str]
    n_bad: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_class_mentions(
    corpora: Sequence[str | Path],
    class_names: Sequence[str],
    *,
    field: str | None = None,
    fmt: str | None = None,
    progress: bool = False,
    skip_bad: bool = False,
) -> FrequencyResult:
    """Stream every corpus file once and count the units that mention each class."""
    if isinstance(corpora, str | Path):
        corpora = [corpora]
    paths = [Path(c) for c in corpora]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"corpus file(s) not found: {', '.join(missing)}")
    matcher = ClassMatcher(class_names)
    stats = ReadStats()
    bar = _progress_bar(progress)
    for path in paths:
        units = iter_units(path, fmt=fmt, field=field, skip_bad=skip_bad, stats=stats)
        for batch in _batched(units, BATCH_UNITS):
            matcher.add_batch(batch)
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return FrequencyResult(
        counts=matcher.as_dict(),
        n_units=matcher.n_units,
        sources=[str(p) for p in paths],
        n_bad=stats.n_bad,
    )


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit=" units", unit_scale=True, desc="counting class mentions")


def run_frequency_analysis(
    corpora: Sequence[str | Path],
    class_names: Sequence[str],
    out_dir: str | Path,
    *,
    field: str | None = None,
    fmt: str | None = None,
    per_class_accuracy: Mapping[str, float] | None = None,
    bins_scheme: str = "quantile",
) -> dict[str, Any]:
    """Count, tabulate and (given per-class accuracy) correlate and plot; JSON-serialisable.

    ``bins_scheme``: ``quantile`` (default), ``log`` or ``paper`` (Figure 3's fixed edges).

    Writes ``frequency.md``, ``frequency.csv``, ``frequency.json`` and, with accuracies,
    ``frequency_vs_accuracy.png`` into ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = count_class_mentions(corpora, class_names, field=field, fmt=fmt)
    files: dict[str, str | None] = {
        "table_md": str(out / "frequency.md"),
        "table_csv": str(out / "frequency.csv"),
        "plot_png": None,
        "json": str(out / "frequency.json"),
    }
    write_frequency_table(
        result.counts, per_class_accuracy, Path(files["table_md"]), Path(files["table_csv"])
    )
    correlation, bins = None, None
    if per_class_accuracy is not None:
        correlation = correlate(result.counts, per_class_accuracy)
        bins = binned_accuracy(result.counts, per_class_accuracy, scheme=bins_scheme)
        title = f"Class-name frequency vs accuracy ({correlation['n_classes']} classes)"
        png = plot_frequency_vs_accuracy(bins, out / "frequency_vs_accuracy.png", title)
        files["plot_png"] = str(png)
    summary = {
        "counts": result.counts,
        "n_units": result.n_units,
        "sources": result.sources,
        "correlation": correlation,
        "bins": bins,
        "bins_scheme": bins_scheme,
        "files": files,
    }
    Path(files["json"]).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
