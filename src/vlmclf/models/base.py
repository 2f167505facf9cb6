"""The small protocols every model hides behind.

Methods see only these. Real checkpoints (``hf:``), tiny random models (``random:``), the
organism (``organism:``) and API models (``openai:`` ...) all implement one of them, so every
method and analysis runs on every model unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from PIL import Image


@runtime_checkable
class ImageTextEncoder(Protocol):
    """A CLIP-style dual encoder."""

    name: str

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings, shape (B, D), float32 on CPU."""
        ...

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings, shape (N, D), float32 on CPU."""
        ...


@dataclass(frozen=True)
class HiddenFeatures:
    """Hidden states of one layer for a batch: at the last token and averaged over all tokens."""

    last_token: torch.Tensor
    mean: torch.Tensor


@runtime_checkable
class VisionLanguageModel(Protocol):
    """A generative VLM that answers a question about one image.

    ``question`` is the bare user text ("What type of object is in this photo?"); the model's
    family adapter wraps it into the family's prompt format and places the image.
    """

    name: str
    context_length: int

    def generate(
        self, images: list[Image.Image], questions: list[str], max_new_tokens: int
    ) -> list[str]:
        """Greedy answers, one per (image, question) pair, with the prompt stripped."""
        ...

    def prompt_length(self, question: str) -> int:
        """Tokens the formatted prompt (image tokens included) occupies in the context."""
        ...

    def hidden_features(
        self, images: list[Image.Image], questions: list[str], layer: int = -1,
        positions: str = "real",
    ) -> HiddenFeatures:  # fmt: skip
        """Hidden states of ``layer`` for each prompt, float32 on CPU; the mean over the real
        tokens (``positions="real"``) or over every position, pads included (``"all"``)."""
        ...


@runtime_checkable
class ChatAPI(Protocol):
    """A remote chat model behind an HTTP API (OpenAI, Anthropic, Gemini, OpenAI-compatible)."""

    name: str

    def generate(
        self, images: list[Image.Image], questions: list[str], max_new_tokens: int
    ) -> list[str]:
        ...
