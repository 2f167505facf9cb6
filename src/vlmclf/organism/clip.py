"""organism:clip, a locked-tower contrastive model in the manner of LiT.

Both towers are pretrained and frozen: EfficientNet-Lite0's pooled 1280-d embedding (the global
visual token) and all-MiniLM-L6-v2's 384-d sentence embedding. Only two linear heads into a
shared 256-d space and a temperature are trained, contrastively, on captions of training images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlmclf.organism.components import (
    IMAGE_FEATURE_DIM,
    IMAGE_RESOLUTION,
    SENTENCE_DIM,
    encode_sentences,
    encode_visual_tokens,
)

EMBED_DIM = 256
INITIAL_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


class ContrastiveHeads(nn.Module):
    """Linear image and text heads plus CLIP's learnable log logit scale."""

    def __init__(
        self,
        image_dim: int = IMAGE_FEATURE_DIM,
        text_dim: int = SENTENCE_DIM,
        embed_dim: int = EMBED_DIM,
    ):
        super().__init__()
        self.image_head = nn.Linear(image_dim, embed_dim)
        self.text_head = nn.Linear(text_dim, embed_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / INITIAL_TEMPERATURE)))

    def embed_images(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(pooled), dim=-1)

    def embed_texts(self, sentences: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(sentences), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE where every pair whose captions name the same class is a positive.

    With ten classes a batch always repeats classes; plain InfoNCE would push an image away from
    a correct caption of another image of its class. Target mass is spread over those positives.
    """
    logits = logit_scale * image_embeds @ text_embeds.T
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    image_to_text = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


class OrganismCLIP:
    """The organism dual encoder behind the ``ImageTextEncoder`` protocol."""

    def __init__(
        self,
        heads: ContrastiveHeads,
        *,
        name: str = "organism:clip",
        resolution: int = IMAGE_RESOLUTION,
    ) -> None:
        self.heads = heads.float().eval().requires_grad_(False)
        self.name = name
        self.resolution = resolution

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings (B, 256), float32 on CPU."""
        pooled = encode_visual_tokens(list(images), self.resolution)[:, 0]
        return self.heads.embed_images(pooled)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, 256), float32 on CPU."""
        return self.heads.embed_texts(encode_sentences(list(texts)))

    @torch.no_grad()
    def classify(self, images: Sequence[Image.Image], class_prompts: list[str]) -> torch.Tensor:
        """Softmax probabilities over ``class_prompts`` (B, N), at the learned temperature."""
        logits = (
            self.heads.logit_scale()
            * self.encode_images(list(images))
            @ self.encode_texts(class_prompts).T
        )
        return logits.softmax(dim=-1)
