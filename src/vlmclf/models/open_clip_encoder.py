"""``open_clip:<arch>:<pretrained-or-path>``: OpenCLIP models behind ``ImageTextEncoder``.

open_clip is an optional dependency (``pip install vlmclf[open_clip]``); it is imported only
when such a model is asked for.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from vlmclf.models import compat

OPEN_CLIP_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(
            "open_clip: models need the optional package open_clip_torch; "
            "install it with: pip install vlmclf[open_clip]"
        ) from err
    return open_clip


class OpenClipEncoder:
    """An OpenCLIP model with its preprocessing transform and tokenizer."""

    def __init__(
        self, model: Any, preprocess: Any, tokenizer: Any, name: str, batch_size: int = 256
    ) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.context_length = int(getattr(model, "context_length", 77))
        self.logit_scale = float(model.logit_scale.detach().exp())

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        parts = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in chunk])
            with torch.inference_mode():
                features = self.model.encode_image(pixels.to(self.device, self.dtype))
            parts.append(features.float().cpu())
        return F.normalize(torch.cat(parts), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        parts = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[start : start + self.batch_size]).to(self.device)
            with torch.inference_mode():
                features = self.model.encode_text(tokens)
            parts.append(features.float().cpu())
        return F.normalize(torch.cat(parts), dim=-1)


def load_open_clip_model(
    name: str, *, device: str = "cpu", dtype: str = "float32", **_: Any
) -> OpenClipEncoder:
    """``name`` is ``<arch>:<pretrained tag or checkpoint path>``, e.g. ``ViT-B-32:openai``."""
    arch, sep, pretrained = name.partition(":")
    if not sep or not arch or not pretrained:
        raise ValueError(
            f"open_clip spec 'open_clip:{name}' must be open_clip:<arch>:<pretrained-or-path>, "
            "e.g. open_clip:ViT-B-32:openai"
        )
    compat.torch_dtype(dtype)
    open_clip = _import_open_clip()
    model, _, preprocess = open_clip.create_model_and_transforms(
        arch,
        pretrained=pretrained,
        device=compat.torch_device(device),
        precision=OPEN_CLIP_PRECISION[dtype],
    )
    return OpenClipEncoder(model, preprocess, open_clip.get_tokenizer(arch), f"open_clip:{name}")
