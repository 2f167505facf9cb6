"""Training data for fine-tuning a VLM with the text-generation objective.

Three sources, all turned into (image, question, answer) items:

* classification data (paper, Section 4.2): the question is the paper's "What type of object is
  in this photo?" and the answer the class name;
* caption-style data (Appendix D): the same images, answered with a caption such as
  "A photo of a {name}." instead of the bare name;
* instruction data in LLaVA's JSON conversation format, mixed in at a chosen ratio. The prompt
  formats in ``models/`` are single-turn, so every (human, gpt) turn pair becomes its own item
  with the conversation's image; the ``<image>`` placeholder is dropped from the question since
  the model's family adapter places the image itself. Conversations without an image are
  skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmclf.data.images import open_image
from vlmclf.data.types import Example
from vlmclf.methods.prompts import QUESTIONS

CLASSIFICATION_QUESTION = QUESTIONS["base"]
CAPTION_TEMPLATE = "A photo of a {}."
IMAGE_PLACEHOLDER = "<image>"
_HUMAN, _GPT = ("human", "user"), ("gpt", "assistant")


@dataclass(frozen=True)
class TrainItem:
    """One training example: the answer is the only part the loss is computed on."""

    id: str
    source: str
    question: str
    answer: str
    loader: Callable[[], Image.Image] = field(compare=False, repr=False)


@dataclass
class InstructionStats:
    conversations: int = 0
    turn_pairs: int = 0
    skipped_text_only: int = 0
    skipped_unpaired_turns: int = 0


def classification_items(
    examples: Sequence[Example],
    class_names: Sequence[str],
    caption_template: str | None = None,
    question: str = CLASSIFICATION_QUESTION,
) -> list[TrainItem]:
    """Items answering the paper's question with the class name (or a caption of it)."""
    if caption_template is not None and "{}" not in caption_template:
        raise ValueError(f"the caption template must contain '{{}}', got {caption_template!r}")
    source = "caption" if caption_template else "classification"
    items = []
    for example in examples:
        name = class_names[example.label]
        answer = caption_template.format(name) if caption_template else name
        items.append(TrainItem(example.id, source, question, answer, example.load))
    return items


def read_llava_conversations(
    path: str | Path, image_folder: str | Path | None = None
) -> tuple[list[TrainItem], InstructionStats]:
    """Items from a LLaVA instruction file: a JSON list (or JSONL) of
    ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value": ...}, ...]}``.

    Image paths resolve against ``image_folder`` (default: the file's folder); a missing image
    fails later, at load time, and that item is skipped. Structural errors name the entry."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"instruction data {file} does not exist")
    entries = _read_entries(file)
    base = Path(image_folder) if image_folder is not None else file.parent
    stats = InstructionStats()
    items: list[TrainItem] = []
    for where, entry in entries:
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        turns = entry.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"{where}: field 'conversations' must be a non-empty list")
        stats.conversations += 1
        image = entry.get("image")
        if not image:
            stats.skipped_text_only += 1
            continue
        if not isinstance(image, str):
            raise ValueError(f"{where}: field 'image' must be a string path")
        loader = partial(open_image, base / image)
        ident = str(entry.get("id", where))
        pairs = _turn_pairs(where, turns, stats)
        for number, (question, answer) in enumerate(pairs):
            items.append(TrainItem(f"{ident}#{number}", "instruction", question, answer, loader))
    stats.turn_pairs = len(items)
    return items, stats


def _read_entries(file: Path) -> list[tuple[str, Any]]:
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() == ".jsonl":
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                entries.append((f"{file} line {number}", _parse(file, line, number)))
        return entries
    data = _parse(file, text, None)
    if not isinstance(data, list):
        raise ValueError(f"{file}: expected a JSON list of conversations (LLaVA format)")
    return [(f"{file} entry {index}", entry) for index, entry in enumerate(data)]


def _parse(file: Path, text: str, line: int | None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        at = f"line {line}" if line is not None else f"line {err.lineno}"
        raise ValueError(f"{file} {at}: invalid JSON ({err.msg})") from err


def _turn_pairs(where: str, turns: list[Any], stats: InstructionStats) -> list[tuple[str, str]]:
    """(question, answer) for each human turn followed by a gpt turn."""
    pairs = []
    index = 0
    while index < len(turns):
        turn = turns[index]
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: turn {index} must be an object with a string 'value'")
        speaker = turn.get("from")
        if speaker not in (*_HUMAN, *_GPT, "system"):
            raise ValueError(f"{where}: turn {index} has unknown 'from' {speaker!r}")
        following = turns[index + 1] if index + 1 < len(turns) else None
        if speaker in _HUMAN and isinstance(following, dict) and following.get("from") in _GPT:
            answer = following.get("value")
            if not isinstance(answer, str):
                raise ValueError(f"{where}: turn {index + 1} must have a string 'value'")
            pairs.append((_strip_placeholder(turn["value"]), answer.strip()))
            index += 2
            continue
        if speaker != "system":
            stats.skipped_unpaired_turns += 1
        index += 1
    return pairs


def _strip_placeholder(question: str) -> str:
    return " ".join(part.strip() for part in question.split(IMAGE_PLACEHOLDER) if part.strip())


def mix_in(
    base: list[TrainItem], extra: list[TrainItem], ratio: float, seed: int
) -> list[TrainItem]:
    """``base`` plus instruction items making up ``ratio`` of the result (extra items repeat in
    a seeded order when there are fewer than needed)."""
    if not 0 < ratio < 1:
        raise ValueError(f"--mix-ratio must be in (0, 1), got {ratio}")
    if not extra:
        raise ValueError("the instruction data holds no usable (image, question, answer) turns")
    wanted = round(len(base) * ratio / (1 - ratio))
    rng = np.random.RandomState(seed)
    chosen: list[TrainItem] = []
    while len(chosen) < wanted:
        chosen += [extra[i] for i in rng.permutation(len(extra))[: wanted - len(chosen)]]
    return base + chosen


def batches_forever(n_items: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Index batches over successive seeded permutations (one per epoch); a batch may span two
    epochs, so every step has ``batch_size`` items."""
    rng = np.random.RandomState(seed)
    pending: list[int] = []
    while True:
        while len(pending) < batch_size:
            pending += rng.permutation(n_items).tolist()
        yield pending[:batch_size]
        pending = pending[batch_size:]
