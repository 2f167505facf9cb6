"""ImageWikiQA: four-way multiple-choice questions about the object in an ImageNet photo.

The question set (2,000 questions, MIT licence, from the paper's repository) ships with the
package as ``imagewikiqa.jsonl``: one JSON object a line with ``image`` (an ImageNet validation
file name such as ``images/ILSVRC2012_val_00039210.JPEG``), ``text`` (the question, the options
``A.`` to ``D.`` one a line, then "Choose A, B, C, or D."), ``label`` (A-D), ``wiki`` (the
supporting Wikipedia sentence) and ``classname``. The images are not shipped: the user points
``images_dir`` at their copy of the ImageNet validation images, either flat (the file names as in
the ``image`` field, with or without its ``images/`` folder) or ImageNet's ``val/<wnid>/<file>``
layout, found by indexing file names once.

Each question becomes an Example whose label indexes ``LETTERS`` and whose ``prompt`` is the
full question text; an image that cannot be found is a failed example, not a failed dataset.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image

from vlmclf.data.images import is_image_name, open_image
from vlmclf.data.types import BadExampleError, Dataset, Example

LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
QUESTIONS_PATH = Path(__file__).with_name("imagewikiqa.jsonl")
CHOOSE_LINE = "Choose A, B, C, or D."
_OPTION_LINE = re.compile(r"^([A-D])\.\s*(.*\S)\s*$")


@dataclass(frozen=True)
class WikiQuestion:
    """One ImageWikiQA question as read from the file (``line`` counts from 1)."""

    line: int
    image: str
    text: str
    stem: str
    options: dict[str, str]
    answer: str
    classname: str
    wiki: str

    @property
    def example_id(self) -> str:
        """Stable and unique: some images carry several questions, some questions several images."""
        return f"{self.line:04d}:{Path(self.image).name}"


def format_question(stem: str, options: Mapping[str, str]) -> str:
    """The question text in the dataset's layout: stem, options A-D one a line, instruction."""
    lines = [stem.strip(), *(f"{letter}. {options[letter]}" for letter in LETTERS), CHOOSE_LINE]
    return "\n".join(lines)


def split_question_text(text: str, where: str) -> tuple[str, dict[str, str]]:
    """(stem, {letter: option}) from a question text; ValueError naming ``where`` if malformed."""
    stem_lines: list[str] = []
    options: dict[str, str] = {}
    for raw in text.splitlines():
        found = _OPTION_LINE.match(raw.strip())
        if found and found.group(1) not in options and (options or found.group(1) == "A"):
            options[found.group(1)] = found.group(2)
        elif raw.strip() != CHOOSE_LINE and not options:
            stem_lines.append(raw)
    if tuple(options) != LETTERS:
        raise ValueError(
            f"{where}: field 'text' must list options A. to D. one a line, found {list(options)}"
        )
    stem = "\n".join(stem_lines).strip()
    if not stem:
        raise ValueError(f"{where}: field 'text' has no question before its options")
    return stem, options


def read_questions(path: str | Path | None = None) -> list[WikiQuestion]:
    """Every question of an ImageWikiQA JSONL file (default: the shipped 2,000), validated."""
    file = Path(path) if path is not None else QUESTIONS_PATH
    if not file.is_file():
        raise ValueError(f"imagewikiqa: question file {file} does not exist")
    questions = []
    with file.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                questions.append(_parse_line(raw, f"{file}:{number}", number))
    if not questions:
        raise ValueError(f"imagewikiqa: {file} holds no questions")
    return questions


def _parse_line(raw: str, where: str, number: int) -> WikiQuestion:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object")
    for name in ("image", "text", "label"):
        if not isinstance(row.get(name), str) or not row[name].strip():
            raise ValueError(f"{where}: field {name!r} must be a non-empty string")
    label = row["label"].strip().upper()
    if label not in LETTERS:
        raise ValueError(f"{where}: field 'label' must be one of A, B, C, D, got {row['label']!r}")
    stem, options = split_question_text(row["text"], where)
    return WikiQuestion(
        line=number, image=row["image"].strip(), text=row["text"].strip(), stem=stem,
        options=options, answer=label, classname=str(row.get("classname", "")),
        wiki=str(row.get("wiki", "")),
    )  # fmt: skip


class ImageLocator:
    """Finds a question's image under a folder: by its relative path, its bare file name, or,
    failing both, through an index of every image file below the folder (built once)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"imagewikiqa: images folder {self.root} does not exist")
        self._index: dict[str, Path] | None = None

    def find(self, image: str) -> Path | None:
        given = Path(image)
        candidates = [given] if given.is_absolute() else [self.root / given, self.root / given.name]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        return self._by_name().get(given.name)

    def _by_name(self) -> dict[str, Path]:
        if self._index is None:
            self._index = {}
            for path in sorted(self.root.rglob("*")):
                if is_image_name(path) and path.is_file():
                    self._index.setdefault(path.name, path)
        return self._index


def load_imagewikiqa(
    images_dir: str | Path, questions: str | Path | None = None, split: str = "test"
) -> Dataset:
    """ImageWikiQA over ``LETTERS``; each Example carries its question as ``prompt``."""
    locator = ImageLocator(images_dir)
    examples = []
    for question in read_questions(questions):
        found = locator.find(question.image)
        source = str(found) if found is not None else f"{locator.root}/{question.image}"
        loader = partial(_open_or_fail, found, question.image, str(locator.root))
        examples.append(
            Example(
                id=question.example_id, label=LETTERS.index(question.answer), split=split,
                source=source, loader=loader, prompt=question.text,
            )  # fmt: skip
        )
    return Dataset("imagewikiqa", split, list(LETTERS), examples)


def _open_or_fail(path: Path | None, image: str, root: str) -> Image.Image:
    if path is None:
        raise BadExampleError(f"{image}: image not found under {root} (by path or file name)")
    return open_image(path)
