"""CLIP ViT-L/14-336 zero-shot, end to end from JPEG files, for ``bench/gpu_suite.py``.

The paper's CLIP (openai/clip-vit-large-patch14-336) built from its config with random weights,
wrapped as the project's ``HFImageTextEncoder``. Files are decoded and preprocessed by the
wrapper's own image processor in worker processes, which hand over uint8 crops (a quarter of the
bytes of float pixels); the device rescales and normalises them, which gives the processor's
float pixels exactly (``tests/test_gpu_suite.py``). Predictions stay on the device until the end:
no host synchronisation inside the loop.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

PHOTO_SIZE = (500, 375)  # (width, height): the most common ImageNet validation image size


@dataclass(frozen=True)
class ClipSizes:
    """Widths and depths of the two towers; ``VIT_L_14_336`` is the paper's CLIP."""

    image_size: int
    vision_hidden: int
    vision_ffn: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_ffn: int
    text_layers: int
    text_heads: int
    projection: int
    vocab: int


VIT_L_14_336 = ClipSizes(336, 1024, 4096, 24, 16, 768, 3072, 12, 12, 768, 49408)
CLIP_TINY = ClipSizes(28, 32, 64, 2, 2, 32, 64, 2, 2, 32, 1536)


def build_clip_arch(device: str, dtype: torch.dtype, tiny: bool = False) -> Any:
    """CLIP ViT-L/14-336 (or its shrunk twin) with random weights, as an ``HFImageTextEncoder``.

    The tokenizer is the project's offline tiny BPE framed like CLIP's; token ids stay below the
    real vocabulary size, so the embedding table has the real shape.
    """
    import transformers as tf

    from vlmclf.models.families import adapter_by_name
    from vlmclf.models.hf import wrap_model
    from vlmclf.models.random_tokenizer import build_tokenizer

    sizes = CLIP_TINY if tiny else VIT_L_14_336
    tokenizer = build_tokenizer("clip")
    ids = {
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip
    config = tf.CLIPConfig(
        text_config={
            "vocab_size": max(sizes.vocab, len(tokenizer)), "hidden_size": sizes.text_hidden,
            "intermediate_size": sizes.text_ffn, "num_hidden_layers": sizes.text_layers,
            "num_attention_heads": sizes.text_heads, "max_position_embeddings": 77,
            "projection_dim": sizes.projection, "hidden_act": "quick_gelu", **ids,
        },
        vision_config={
            "hidden_size": sizes.vision_hidden, "intermediate_size": sizes.vision_ffn,
            "num_hidden_layers": sizes.vision_layers, "num_attention_heads": sizes.vision_heads,
            "image_size": sizes.image_size, "patch_size": 14, "projection_dim": sizes.projection,
            "hidden_act": "quick_gelu",
        },
        projection_dim=sizes.projection,
    )  # fmt: skip
    size = sizes.image_size
    processor = tf.CLIPProcessor(
        tf.CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer,
    )
    with torch.device(device):
        model = tf.CLIPModel._from_config(config, dtype=dtype)
    name = "arch:clip-vit-l-14-336" + ("-tiny" if tiny else "")
    return wrap_model(model.eval(), processor, adapter_by_name("clip"), name, placed=True)


# ------------------------------------------------------------------ JPEG files


def synthetic_photo(seed: int, size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
    """A photo-like image: smooth colour fields plus sensor-like noise (pure noise would make
    JPEG decoding slower than it is on real photographs)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    noisy = smooth + rng.normal(0.0, 6.0, smooth.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _write_photo(task: tuple[int, str]) -> str:
    seed, path = task
    synthetic_photo(seed).save(path, format="JPEG", quality=90)
    return path


@contextmanager
def jpeg_folder(count: int, workers: int) -> Iterator[list[str]]:
    """``count`` JPEG files in a temporary folder (written in parallel), removed afterwards."""
    folder = tempfile.mkdtemp(prefix="vlmclf-jpegs-")
    try:
        tasks = [(i, os.path.join(folder, f"{i:06d}.jpg")) for i in range(count)]
        with get_context("fork").Pool(max(1, workers)) as pool:
            paths = pool.map(_write_photo, tasks, chunksize=16)
        yield paths
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class JpegCrops(torch.utils.data.Dataset):
    """Files to uint8 crops (3, S, S) through the encoder's own image processor."""

    def __init__(self, paths: list[str], image_processor: Any):
        self.paths = paths
        self.image_processor = image_processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return uint8_crop(self.image_processor, self.paths[index])


def uint8_crop(image_processor: Any, path: str | Path) -> torch.Tensor:
    """Decode, resize and centre-crop as the processor does, stopping before the float steps."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    pixels = image_processor(
        images=[rgb], do_rescale=False, do_normalize=False, return_tensors="pt"
    )["pixel_values"]
    return pixels[0].to(torch.uint8)


def normalizer(image_processor: Any, device: torch.device, dtype: torch.dtype) -> Callable:
    """uint8 (B, 3, S, S) on any device -> the processor's normalised pixels in ``dtype``."""
    scale = float(getattr(image_processor, "rescale_factor", 1 / 255))
    mean = torch.tensor(image_processor.image_mean, device=device)[None, :, None, None]
    std = torch.tensor(image_processor.image_std, device=device)[None, :, None, None]

    def normalize(batch: torch.Tensor) -> torch.Tensor:
        pixels = batch.to(device, non_blocking=True).float() * scale
        return ((pixels - mean) / std).to(dtype)

    return normalize


def crop_loader(
    paths: list[str], image_processor: Any, batch: int, workers: int, pin: bool
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        JpegCrops(paths, image_processor), batch_size=batch, num_workers=workers,
        pin_memory=pin, prefetch_factor=4 if workers else None,
        multiprocessing_context=get_context("fork") if workers else None,
    )  # fmt: skip


# ------------------------------------------------------------------ measurements


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def zero_shot_from_files(
    encoder: Any, text: torch.Tensor, paths: list[str], batch: int, workers: int, decode_batch: int
) -> dict[str, Any]:
    """Files -> predicted class for every file; images/s over the whole pass and after the
    first forward (worker start-up excluded). Workers hand over small batches of crops (so the
    first arrive soon and all workers stay busy); the device gathers them into batches of
    ``batch`` for the tower. ``text``: (C, D) normalised, on the device."""
    device, dtype = encoder.device, encoder.dtype
    normalize = normalizer(encoder.processor.image_processor, device, dtype)
    loader = crop_loader(
        paths, encoder.processor.image_processor, decode_batch, workers, device.type == "cuda"
    )
    predictions: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []
    start = time.perf_counter()
    first_at, first_count = None, 0

    def classify() -> None:
        pixels = normalize(torch.cat(pending)) if len(pending) > 1 else normalize(pending[0])
        pending.clear()
        features = _features(encoder.model.get_image_features(pixel_values=pixels))
        similarity = torch.nn.functional.normalize(features.float(), dim=-1) @ text.T
        predictions.append(similarity.argmax(dim=-1))

    with torch.inference_mode():
        for crops in loader:
            pending.append(crops.to(device, non_blocking=True))
            if sum(len(c) for c in pending) >= batch:
                classify()
                if first_at is None:
                    _sync(device)
                    first_at, first_count = time.perf_counter(), len(predictions[0])
        if pending:
            classify()
    _sync(device)
    seconds = time.perf_counter() - start
    predicted = torch.cat(predictions).cpu()
    steady = seconds - (first_at - start) if first_at is not None else 0.0
    rest = len(paths) - first_count
    return {
        "images": int(predicted.numel()),
        "images_per_s": len(paths) / seconds,
        "steady_images_per_s": rest / steady if steady > 0 and rest > 0 else None,
        "seconds": seconds,
    }


def _features(output: Any) -> torch.Tensor:
    from vlmclf.models.compat import features_tensor

    return features_tensor(output)


def tower_images_per_s(encoder: Any, batch: int, repeats: int) -> float:
    """The image tower alone on device-resident uint8 crops (normalisation included)."""
    device, dtype = encoder.device, encoder.dtype
    processor = encoder.processor.image_processor
    size = int(processor.crop_size["height"])
    normalize = normalizer(processor, device, dtype)
    generator = torch.Generator(device="cpu").manual_seed(0)
    crops = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    crops = crops.to(device)
    with torch.inference_mode():
        encoder.model.get_image_features(pixel_values=normalize(crops))  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            encoder.model.get_image_features(pixel_values=normalize(crops))
        _sync(device)
    return batch * repeats / (time.perf_counter() - start)


def decode_images_per_s(paths: list[str], image_processor: Any, batch: int, workers: int) -> float:
    """The worker processes alone: files to uint8 crops, no model."""
    loader = crop_loader(paths, image_processor, batch, workers, pin=False)
    start = time.perf_counter()
    count = sum(len(crops) for crops in loader)
    return count / (time.perf_counter() - start)
