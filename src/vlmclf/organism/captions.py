"""Caption data for the organism, with class frequency as a controlled knob.

The VLM's projector is trained like LLaVA's stage 1: an instruction asking for a brief
description, answered by a caption that names the object. How many captions each class gets is
set by ``freq``: a Zipf law over a seeded random ranking of the classes (standing in for how
unevenly real pre-training corpora mention classes), uniform, or weights read from a JSON file.
The exact per-class counts and the ranking go into the training record, where the frequency
analysis finds them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ZIPF_EXPONENT = 1.0
"""With ten classes, exponent 1 gives the most frequent class ten times the captions of the
least frequent."""

# LLaVA's stage-1 (LCS-558K) brief-description instructions, plus a few plain questions. The
# paper's own evaluation wordings are deliberately absent, so evaluation is not training.
INSTRUCTIONS = [
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
    "What is in this image?",
    "What does this picture show?",
    "What can you see in this photo?",
]

VLM_CAPTION_TEMPLATES = [
    "This is a photo of {a} {name}.",
    "The object in this photo is {a} {name}.",
    "{A} {name} on a plain dark background.",
    "A black and white photo of {a} {name}.",
    "A product photo of {a} {name}.",
    "A close-up of {a} {name}.",
    "This image shows {a} {name}.",
    "{A} {name}.",
]

CLIP_CAPTION_TEMPLATES = [
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a product photo of a {}.",
    "a close-up photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a grayscale photo of the {}.",
    "a small photo of a {}.",
    "the {}.",
]


@dataclass(frozen=True)
class CaptionFrequencies:
    """How many captions each class gets and why."""

    freq: str
    counts: dict[str, int]
    weights: dict[str, float]
    ranking: list[str] | None  # most to least frequent, for zipf

    def as_record(self) -> dict[str, object]:
        return {
            "freq": self.freq,
            "zipf_exponent": ZIPF_EXPONENT if self.freq == "zipf" else None,
            "ranking": self.ranking,
            "weights": self.weights,
            "counts": self.counts,
            "total": sum(self.counts.values()),
        }


@dataclass(frozen=True)
class CaptionSample:
    """One training caption: example index into the split, its label, the prompt and target."""

    index: int
    label: int
    instruction: str
    caption: str


def class_weights(
    class_names: Sequence[str], freq: str, seed: int
) -> tuple[dict[str, float], list[str] | None]:
    """Normalised weights per class for ``freq`` ('zipf', 'uniform' or a JSON file path)."""
    names = list(class_names)
    if freq == "uniform":
        return {name: 1.0 / len(names) for name in names}, None
    if freq == "zipf":
        ranking = names[:]
        random.Random(seed).shuffle(ranking)
        raw = {name: (rank + 1) ** -ZIPF_EXPONENT for rank, name in enumerate(ranking)}
        total = sum(raw.values())
        return {name: raw[name] / total for name in names}, ranking
    return read_frequency_file(Path(freq), names), None


def read_frequency_file(path: Path, class_names: Sequence[str]) -> dict[str, float]:
    """Weights from a JSON object {class name: non-negative number}, normalised to sum 1."""
    if not path.is_file():
        raise ValueError(f"--freq: expected 'zipf', 'uniform' or a JSON file; {path} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{class name: weight}}")
    unknown = sorted(set(data) - set(class_names))
    missing = [name for name in class_names if name not in data]
    if unknown or missing:
        raise ValueError(
            f"{path}: class names must match the list; unknown {unknown}, missing {missing}"
        )
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(
                f"{path}: weight of {name!r} must be a non-negative number, got {value!r}"
            )
    total = float(sum(data.values()))
    if total <= 0:
        raise ValueError(f"{path}: weights sum to zero")
    return {name: float(data[name]) / total for name in class_names}


def caption_frequencies(
    class_names: Sequence[str], total: int, freq: str = "zipf", seed: int = 0
) -> CaptionFrequencies:
    """Integer caption counts summing to ``total`` (largest-remainder rounding of the weights;
    every class with a positive weight gets at least one caption)."""
    weights, ranking = class_weights(class_names, freq, seed)
    present = sum(1 for name in class_names if weights[name] > 0)
    if total < present:
        raise ValueError(f"{total} captions cannot cover the {present} classes with weight > 0")
    exact = {name: weights[name] * total for name in class_names}
    counts = {name: max(int(exact[name]), 1 if weights[name] > 0 else 0) for name in class_names}
    by_remainder = sorted(class_names, key=lambda n: exact[n] - int(exact[n]), reverse=True)
    for name in by_remainder[: max(0, total - sum(counts.values()))]:
        counts[name] += 1
    return CaptionFrequencies(freq, counts, weights, ranking)


def article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def vlm_caption(template: str, class_name: str) -> str:
    """A caption naming the class as it appears in the class list (lower-cased mid-sentence),
    so the containment rule can find it in what the model learns to say."""
    name = class_name.lower()
    a = article(name)
    return template.format(a=a, A=a.capitalize(), name=name)


def build_caption_samples(
    labels: np.ndarray,
    class_names: Sequence[str],
    frequencies: CaptionFrequencies,
    seed: int = 0,
) -> list[CaptionSample]:
    """One caption per drawn image: ``counts[c]`` distinct images of class c (cycling only if
    the class has fewer images), each with a random instruction and caption template."""
    rng = np.random.default_rng(seed)
    picker = random.Random(seed)
    samples: list[CaptionSample] = []
    for label, name in enumerate(class_names):
        pool = np.flatnonzero(labels == label)
        count = frequencies.counts[name]
        if count and pool.size == 0:
            raise ValueError(f"class {name!r} has captions to draw but no training images")
        order = rng.permutation(pool)
        chosen = [int(order[i % pool.size]) for i in range(count)]
        for index in chosen:
            template = picker.choice(VLM_CAPTION_TEMPLATES)
            samples.append(
                CaptionSample(
                    index, label, picker.choice(INSTRUCTIONS), vlm_caption(template, name)
                )
            )
    picker.shuffle(samples)
    return samples
