"""Streaming readers for training corpora: every record of a file as one text *unit*.

The frequency analysis counts how many units (captions, conversation turns) mention each class,
so a reader only has to yield strings, one unit at a time, without ever holding a whole corpus:
training sets such as LLaVA's 665K conversations or LAION captions run to gigabytes.

Formats (chosen from the extension after an optional ``.gz``, or named with ``fmt``):

* ``text``  (``.txt``, ``.text``): one unit per line; blank lines are not units.
* ``jsonl`` (``.jsonl``, ``.ndjson``): one JSON record per line, see :func:`units_from_record`.
* ``json``  (``.json``): a JSON array of such records, parsed incrementally.
* ``csv`` / ``tsv``: one unit per row, from the column ``field`` (default ``caption``/``text``).

Bad input (unparsable JSON, a record without the field) raises ``ValueError`` naming the file and
line; with ``skip_bad=True`` the record is skipped and counted in a :class:`ReadStats`.
Bytes that are not UTF-8 are replaced (U+FFFD) rather than stopping a multi-gigabyte scan.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

FORMATS = ("text", "jsonl", "json", "csv", "tsv")
DEFAULT_FIELDS = ("caption", "text")
IMAGE_TOKEN = "<image>"
_EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
}
_CHUNK_CHARS = 1 << 20
_MAX_RECORD_CHARS = 1 << 28  # a "record" larger than this is taken as broken JSON
_WHITESPACE = re.compile(r"[ \t\r\n]*")


@dataclass
class ReadStats:
    """What a reader skipped; filled in while the reader is consumed."""

    n_bad: int = 0


def detect_format(path: str | Path) -> str:
    """The corpus format implied by the file name (``.gz`` is looked through)."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _EXTENSIONS:
        return _EXTENSIONS[suffixes[-1]]
    raise ValueError(
        f"{p}: cannot tell the corpus format from the extension; pass fmt= one of {FORMATS}"
    )


def open_text(path: str | Path) -> TextIO:
    """Open a (possibly gzip-compressed) UTF-8 file for streaming text reads."""
    p = Path(path)
    if p.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", errors="replace", newline="")
    return open(p, encoding="utf-8", errors="replace", newline="")


def iter_units(
    path: str | Path,
    *,
    fmt: str | None = None,
    field: str | None = None,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[str]:
    """Yield every text unit of one corpus file, streaming."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"corpus file not found: {p}")
    kind = fmt if fmt is not None else detect_format(p)
    if kind not in FORMATS:
        raise ValueError(f"{p}: unknown corpus format {kind!r}; expected one of {FORMATS}")
    stats = stats if stats is not None else ReadStats()
    if kind == "text":
        yield from _iter_text(p)
    elif kind == "jsonl":
        yield from _iter_jsonl(p, field, skip_bad, stats)
    elif kind == "json":
        yield from _iter_json_array(p, field, skip_bad, stats)
    else:
        yield from _iter_csv(p, field, "\t" if kind == "tsv" else ",", skip_bad, stats)


def units_from_record(record: Any, field: str | None) -> list[str] | None:
    """The units of one JSON record, or None when it has none of the expected shape.

    With ``field`` (a dotted path such as ``meta.caption`` or ``captions.0``) the value there is
    used. Without it: a LLaVA/ShareGPT record gives one unit per ``conversations`` turn, otherwise
    ``caption`` or ``text``; a bare string is itself a unit. A value that is a list of strings
    (COCO-style several captions per image) gives one unit per string.
    """
    if field is not None:
        value = _lookup(record, field)
    elif isinstance(record, str):
        value = record
    elif isinstance(record, dict) and "conversations" in record:
        value = record["conversations"]
    elif isinstance(record, dict):
        value = next((record[k] for k in DEFAULT_FIELDS if k in record), None)
    else:
        value = None
    return _units_from_value(value)


def _units_from_value(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, dict) for v in value):
            return _conversation_turns(value)
    return None


def _conversation_turns(turns: list[dict]) -> list[str] | None:
    """Each turn's text (``value``, or ``content`` in OpenAI-style records), <image> removed."""
    units = []
    for turn in turns:
        text = turn.get("value", turn.get("content"))
        if not isinstance(text, str):
            return None
        units.append(text.replace(IMAGE_TOKEN, " "))
    return units


def _lookup(record: Any, dotted: str) -> Any:
    value = record
    for key in dotted.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and _is_index(key, len(value)):
            value = value[int(key)]
        else:
            return None
    return value


def _is_index(key: str, length: int) -> bool:
    return key.lstrip("-").isdigit() and -length <= int(key) < length


def _field_message(field: str | None) -> str:
    if field is not None:
        return f"no string (or list of strings) at field {field!r}"
    return "no 'conversations', 'caption' or 'text' field (pass field=)"


def _iter_text(path: Path) -> Iterator[str]:
    with open_text(path) as fh:
        for line in fh:
            if line.strip():
                yield line.rstrip("\r\n")


def _iter_jsonl(path: Path, field: str | None, skip_bad: bool, stats: ReadStats) -> Iterator[str]:
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                _bad(skip_bad, stats, f"{path}:{lineno}: invalid JSON: {exc.msg}")
                continue
            units = units_from_record(record, field)
            if units is None:
                _bad(skip_bad, stats, f"{path}:{lineno}: {_field_message(field)}")
                continue
            yield from units


def _bad(skip_bad: bool, stats: ReadStats, message: str) -> None:
    if not skip_bad:
        raise ValueError(message)
    stats.n_bad += 1


def _iter_csv(
    path: Path, field: str | None, delimiter: str, skip_bad: bool, stats: ReadStats
) -> Iterator[str]:
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        names = [field] if field is not None else list(DEFAULT_FIELDS)
        column = next((header.index(n) for n in names if n in header), None)
        if column is None:
            raise ValueError(f"{path}:1: no column {' or '.join(map(repr, names))} in {header}")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ValueError(f"{path}:{reader.line_num}: {exc}") from exc
            if not row:
                continue
            if column >= len(row):
                _bad(skip_bad, stats, f"{path}:{reader.line_num}: row has no column {column + 1}")
                continue
            yield row[column]


class _ArrayStream:
    """Incremental reader of one top-level JSON array, a chunk of text at a time."""

    def __init__(self, fh: TextIO, path: Path) -> None:
        self.fh, self.path = fh, path
        self.buf, self.pos, self.eof = "", 0, False
        self.line = 1  # line number of buf[0], for error messages
        self.decoder = json.JSONDecoder()

    def more(self, at_least: int = 0) -> bool:
        """Append at least one chunk to the buffer, dropping what has been consumed."""
        if self.eof:
            return False
        self.line += self.buf.count("\n", 0, self.pos)
        self.buf, self.pos = self.buf[self.pos :], 0
        chunk = self.fh.read(max(at_least, _CHUNK_CHARS))
        self.eof = not chunk
        self.buf += chunk
        return bool(chunk)

    def where(self) -> str:
        return f"{self.path}:{self.line + self.buf.count(chr(10), 0, self.pos)}"

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file)."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self.more():
                return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def value(self) -> Any:
        """Decode the value after the cursor, reading more text until it is complete."""
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                pending = len(self.buf) - self.pos
                # doubling the read keeps re-parsing linear; the cap stops a broken file from
                # being read whole into memory in search of the end of a "record"
                if pending < _MAX_RECORD_CHARS and self.more(at_least=pending):
                    continue
                raise ValueError(f"{self.where()}: invalid JSON: {exc.msg}") from exc
            # a number or literal ending at the buffer edge may continue in the next chunk
            if end == len(self.buf) and self.more():
                continue
            self.pos = end
            return obj

    def elements(self) -> Iterator[Any]:
        if self.peek() != "[":
            raise ValueError(f"{self.where()}: expected a JSON array of records ('[')")
        self.pos += 1
        if self.peek() == "]":
            return
        while True:
            yield self.value()
            sep = self.peek()
            self.pos += 1
            if sep == "]":
                return
            if sep != ",":
                raise ValueError(f"{self.where()}: expected ',' or ']' in the JSON array")


def _iter_json_array(
    path: Path, field: str | None, skip_bad: bool, stats: ReadStats
) -> Iterator[str]:
    with open_text(path) as fh:
        stream = _ArrayStream(fh, path)
        for index, record in enumerate(stream.elements()):
            units = units_from_record(record, field)
            if units is None:
                where = f"{stream.where()} (element {index})"
                _bad(skip_bad, stats, f"{where}: {_field_message(field)}")
                continue
            yield from units


_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pe", "da", "gu", "zo", "ri", "an")
_COMMON = (
    "a",
    "the",
    "of",
    "in",
    "on",
    "with",
    "and",
    "photo",
    "picture",
    "image",
    "showing",
    "large",
    "small",
    "white",
    "black",
    "red",
    "near",
    "next",
    "to",
    "an",
    "is",
    "dog",
    "cat",
    "shark",
    "bird",
    "car",
    "top",
    "wheel",
)
_PUNCT = (".", ",", "!", "?", ";", " -", ":")


def synthetic_captions(
    n: int, class_names: list[str], *, seed: int = 0, mention_rate: float = 0.35
) -> Iterator[str]:
    """Seeded caption-like lines: filler words, class names in varied case/spelling, punctuation.

    For benchmarks and tests of the frequency counter, where realistic shape (8-20 words, a few
    class mentions, hyphens, possessives) matters and real corpora are not available offline.
    """
    import random

    rng = random.Random(seed)
    filler = list(_COMMON) + [
        "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(3000)
    ]
    for _ in range(n):
        words = rng.choices(filler, k=rng.randint(8, 20))
        while rng.random() < mention_rate:
            words.insert(rng.randrange(len(words) + 1), _spelled(rng, rng.choice(class_names)))
        text = " ".join(words)
        if rng.random() < 0.5:
            text += rng.choice(_PUNCT)
        yield text


def _spelled(rng: Any, name: str) -> str:
    """A class name as captions might write it: case changes, hyphens as spaces, possessive."""
    roll = rng.random()
    if roll < 0.25:
        name = name.upper() if rng.random() < 0.3 else name.lower()
    elif roll < 0.35:
        name = name.replace("-", " ")
    elif roll < 0.45:
        name = name + "'s"
    elif roll < 0.5:
        name = "(" + name + ")"
    return name
