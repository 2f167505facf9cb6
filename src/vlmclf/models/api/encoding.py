"""What is sent (the image as PNG bytes) and what is read back for scoring (letter logprobs)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from PIL import Image


def encode_png(image: Image.Image, max_side: int | None) -> bytes:
    """The PNG bytes sent for ``image``: RGB, longest side at most ``max_side`` (aspect kept)."""
    rgb = image.convert("RGB")
    longest = max(rgb.size)
    if max_side is not None and longest > max_side:
        scale = max_side / longest
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


def letter_logprobs(top: list[list[Any]] | list[tuple[str, float]],
                    letters: Sequence[str]) -> dict[str, float | None]:
    """Log-probability of each letter as the first answer token (None: not among the top N).

    Tokens that differ only by spaces or brackets ("A", " A", "(A") are the same answer, so
    their probabilities are summed.
    """
    found: dict[str, list[float]] = {letter: [] for letter in letters}
    for token, logprob in top:
        normal = str(token).strip().strip("()[]{}.:,*\"'")
        if normal in found:
            found[normal].append(float(logprob))
    return {letter: _logsumexp(values) if values else None for letter, values in found.items()}


def _logsumexp(values: list[float]) -> float:
    peak = max(values)
    return peak + math.log(sum(math.exp(v - peak) for v in values))
