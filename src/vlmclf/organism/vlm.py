"""organism:vlm, a LLaVA-style VLM: frozen EfficientNet-Lite0 -> trained MLP -> frozen SmolLM2.

The forward is the one LLaVA uses: format the chat prompt with the image placeholder where
LLaVA puts ``<image>`` (first in the user turn, then a newline and the question), embed the text
around it with the language model's own embedding table, splice the projected visual tokens in
between, and run the causal LM on ``inputs_embeds``. ``prompt_embeddings`` exposes that prefix so
likelihood scoring can extend it with continuation tokens; ``text_prompt_embeddings`` is the same
prompt without the image, the image-free prior of classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import GenerationConfig

from vlmclf.models.base import HiddenFeatures
from vlmclf.organism.components import (
    IMAGE_ENCODER,
    IMAGE_FEATURE_DIM,
    IMAGE_RESOLUTION,
    encode_visual_tokens,
)

IMAGE_PLACEHOLDER = "<image>"
"""Where the visual tokens go in the formatted prompt; SmolLM2's vocabulary has no such token,
and the placeholder never reaches the tokenizer: the text is split around it."""


class Projector(nn.Module):
    """LLaVA-1.5's ``mlp2x_gelu``: Linear -> GELU -> Linear, image features to LM embeddings."""

    def __init__(self, in_dim: int = IMAGE_FEATURE_DIM, hidden_dim: int = 576, out_dim: int = 576):
        super().__init__()
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, visual_tokens: torch.Tensor) -> torch.Tensor:
        return self.net(visual_tokens)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _check_pairs(images: Sequence[Image.Image], questions: Sequence[str]) -> None:
    if len(images) != len(questions):
        raise ValueError(f"got {len(images)} images but {len(questions)} questions")
    if not images:
        raise ValueError("got an empty batch")


class OrganismVLM:
    """The organism VLM behind the ``VisionLanguageModel`` protocol.

    Public: ``lm`` (LlamaForCausalLM), ``tokenizer``, ``projector``, ``num_visual_tokens``,
    ``resolution``, ``image_encoder``, ``device``, ``dtype``.
    """

    def __init__(
        self,
        lm: Any,
        tokenizer: Any,
        projector: Projector,
        *,
        name: str = "organism:vlm",
        num_visual_tokens: int = 5,
        resolution: int = IMAGE_RESOLUTION,
        image_encoder: str = IMAGE_ENCODER,
    ) -> None:
        self.lm = lm
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(lm.parameters()).device
        self.dtype = next(lm.parameters()).dtype
        self.projector = projector.to(self.device, self.dtype).eval().requires_grad_(False)
        self.num_visual_tokens = num_visual_tokens
        self.resolution = resolution
        self.image_encoder = image_encoder
        self.context_length = int(lm.config.max_position_embeddings)
        self.pad_token_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self._pieces = lru_cache(maxsize=256)(self._tokenized_pieces)

    # ------------------------------------------------------------------ prompt

    def format_prompt(self, question: str, with_image: bool = True) -> str:
        """The chat-template text, with IMAGE_PLACEHOLDER + newline before the question."""
        content = f"{IMAGE_PLACEHOLDER}\n{question}" if with_image else question
        messages = [{"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def prompt_pieces(self, question: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the visual tokens for ``question``."""
        return self._pieces(question)

    def _tokenized_pieces(self, question: str) -> tuple[list[int], list[int]]:
        text = self.format_prompt(question)
        if text.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"the question may not contain {IMAGE_PLACEHOLDER!r}: {question!r}")
        before, after = text.split(IMAGE_PLACEHOLDER)
        return self._ids(before), self._ids(after)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_length(self, question: str) -> int:
        """Context tokens of the formatted prompt, the visual tokens included."""
        before, after = self.prompt_pieces(question)
        return len(before) + self.num_visual_tokens + len(after)

    # -------------------------------------------------------------- embeddings

    def embed_ids(self, ids: Sequence[int]) -> torch.Tensor:
        """The LM's input embeddings of ``ids``, (len(ids), hidden)."""
        table = self.lm.get_input_embeddings()
        return table(torch.tensor(list(ids), dtype=torch.long, device=self.device))

    @torch.no_grad()
    def visual_tokens(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Frozen image encoder output for PIL images, float32 (B, 5, channels) on CPU."""
        return encode_visual_tokens(list(images), self.resolution, encoder=self.image_encoder)

    def project(self, visual_tokens: torch.Tensor) -> torch.Tensor:
        """Projected visual tokens in the LM's embedding space, (B, N, hidden)."""
        return self.projector(visual_tokens.to(self.device, self.dtype))

    def embeddings_from_visual_tokens(
        self, visual_tokens: torch.Tensor, questions: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt embeddings with the projected ``visual_tokens`` spliced in.

        Gradients flow to the projector (training uses this); call under no_grad otherwise.
        """
        if visual_tokens.shape[0] != len(questions):
            raise ValueError(
                f"{visual_tokens.shape[0]} visual token rows, {len(questions)} questions"
            )
        projected = self.project(visual_tokens)
        rows = []
        for visual, question in zip(projected, questions, strict=True):
            before, after = self.prompt_pieces(question)
            rows.append(torch.cat([self.embed_ids(before), visual, self.embed_ids(after)]))
        return self._left_pad(rows)

    @torch.no_grad()
    def prompt_embeddings(
        self, images: Sequence[Image.Image], questions: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_embeds (B, T, hidden), attention_mask (B, T)) of the prompts, left-padded.

        Run the LM on them with ``position_ids=positions_from_mask(mask)`` (``forward``)."""
        _check_pairs(images, questions)
        return self.embeddings_from_visual_tokens(self.visual_tokens(images), questions)

    @torch.no_grad()
    def text_prompt_embeddings(self, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The same chat prompt with no image at all (no placeholder, no visual tokens)."""
        if not questions:
            raise ValueError("got an empty batch")
        rows = [
            self.embed_ids(self._ids(self.format_prompt(q, with_image=False))) for q in questions
        ]
        return self._left_pad(rows)

    def text_prompt_ids(self, question: str) -> list[int]:
        """Token ids of the image-free prompt (for ``PrefixScorer.prefill_text``)."""
        return self._ids(self.format_prompt(question, with_image=False))

    def _left_pad(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(row.shape[0] for row in rows)
        pad = self.embed_ids([self.pad_token_id])
        embeds, masks = [], []
        for row in rows:
            missing = length - row.shape[0]
            embeds.append(torch.cat([pad.expand(missing, -1), row]))
            mask = torch.zeros(length, dtype=torch.long, device=self.device)
            mask[missing:] = 1
            masks.append(mask)
        return torch.stack(embeds), torch.stack(masks)

    # ----------------------------------------------------------------- forward

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any
    ) -> Any:
        """The causal LM on prompt embeddings, positions counted from each row's first token."""
        return self.lm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            **kwargs,
        )

    def _greedy_config(self, max_new_tokens: int) -> GenerationConfig:
        return GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.pad_token_id,
        )

    def generate(
        self, images: list[Image.Image], questions: list[str], max_new_tokens: int
    ) -> list[str]:
        """Greedy answers, one per (image, question) pair, with the prompt stripped."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        embeds, mask = self.prompt_embeddings(images, questions)
        with torch.inference_mode():
            output = self.lm.generate(
                inputs_embeds=embeds,
                attention_mask=mask,
                generation_config=self._greedy_config(max_new_tokens),
            )
        texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def hidden_features(
        self, images: list[Image.Image], questions: list[str], layer: int = -1,
        positions: str = "real",
    ) -> HiddenFeatures:  # fmt: skip
        """Layer ``layer`` of the LM (0 = embeddings, -1 = last) at each prompt's last token and
        averaged over its real tokens (``positions="all"``: every position, pads included),
        visual tokens included; float32 on CPU."""
        embeds, mask = self.prompt_embeddings(images, questions)
        with torch.inference_mode():
            output = self.forward(embeds, mask, output_hidden_states=True, use_cache=False)
        states = output.hidden_states
        if not -len(states) <= layer < len(states):
            raise ValueError(f"layer {layer} out of range for {len(states)} hidden states")
        hidden = states[layer].float()
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        if positions == "all":
            weights = torch.ones_like(weights)
        mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return HiddenFeatures(last_token=hidden[:, -1].cpu(), mean=mean.cpu())
