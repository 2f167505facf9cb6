"""LiT-style training of organism:clip: linear heads on frozen image and sentence embeddings.

Each sample pairs a training image's pooled EfficientNet-Lite0 embedding with a caption made
from a random template and the image's class name, embedded by frozen MiniLM. Captions are
balanced over classes by default (``freq='uniform'``); the frequency knob works as for the VLM.
Since both towers are frozen, every feature is computed once and a step costs milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmclf.data.idx import FASHION_MNIST_ROOT, read_fashion_mnist
from vlmclf.organism.captions import CLIP_CAPTION_TEMPLATES, caption_frequencies
from vlmclf.organism.clip import ContrastiveHeads, contrastive_loss
from vlmclf.organism.components import encode_sentences
from vlmclf.organism.features import dataset_visual_tokens
from vlmclf.organism.load import clip_config, save_weights
from vlmclf.organism.schedule import cosine_lr, loss_summary

DEFAULT_STEPS = 2000
DEFAULT_BATCH = 64
DEFAULT_LR = 1e-3
DEFAULT_IMAGES_PER_CLASS = 500


def train_clip(
    out_dir: Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    freq: str | None = None,
    log: Callable[[str], None],
    batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    captions: int | None = None,
    data_root: str = FASHION_MNIST_ROOT,
) -> dict[str, Any]:
    """Train the heads; write weights and config to ``out_dir``; return the record body.

    ``captions`` images (default 500 per class) are drawn per class by ``freq``; each step
    samples ``batch_size`` of them, each with a fresh random template.
    """
    steps = steps or DEFAULT_STEPS
    freq = freq or "uniform"
    dataset = read_fashion_mnist(data_root, "train")
    class_names = dataset.class_names
    total = captions or DEFAULT_IMAGES_PER_CLASS * len(class_names)
    labels_all = np.array([example.label for example in dataset.examples])
    frequencies = caption_frequencies(class_names, total, freq, seed)
    indices, labels = draw_images(labels_all, class_names, frequencies.counts, seed)
    log(f"visual tokens of {len(indices)} training images (encoding any not cached)")
    pooled = dataset_visual_tokens(
        dataset, indices, progress=lambda done, n: log(f"  encoded {done}/{n}")
    )[:, 0]
    texts = [template.format(name) for template in CLIP_CAPTION_TEMPLATES for name in class_names]
    sentences = encode_sentences(texts).view(len(CLIP_CAPTION_TEMPLATES), len(class_names), -1)
    label_tensor = torch.tensor(labels)

    heads = ContrastiveHeads(pooled.shape[1], sentences.shape[2])
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    initial = evaluation_loss(heads, pooled, sentences, label_tensor)
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(steps):
        rows = torch.randint(len(indices), (batch_size,), generator=generator)
        templates = torch.randint(len(CLIP_CAPTION_TEMPLATES), (batch_size,), generator=generator)
        batch_labels = label_tensor[rows]
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        loss = contrastive_loss(
            heads.embed_images(pooled[rows]),
            heads.embed_texts(sentences[templates, batch_labels]),
            batch_labels,
            heads.logit_scale(),
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 0 or (step + 1) % 200 == 0 or step + 1 == steps:
            per_step = (time.perf_counter() - started) / (step + 1)
            log(f"step {step + 1}/{steps} loss {losses[-1]:.4f} ({per_step * 1000:.1f} ms/step)")

    save_weights(out_dir, "clip", heads, clip_config(heads))
    summary = loss_summary(losses)
    return {
        "args": {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "freq": freq,
            "seed": seed,
            "captions": total,
        },
        "seed": seed,
        "trained": "image and text linear heads and the temperature; both towers frozen (LiT)",
        "objective": "symmetric InfoNCE, same-class pairs as positives",
        "optimizer": {"name": "AdamW", "lr": lr, "weight_decay": 0.0, "schedule": "cosine"},
        "data": {
            "dataset": "fashion_mnist",
            "split": "train",
            "root": str(data_root),
            "images": len(indices),
            "captions": frequencies.as_record(),
            "captions_note": "counts are images per class; each draw captions its image "
            "with a random template",
            "caption_templates": CLIP_CAPTION_TEMPLATES,
        },
        "loss": summary,
        "final_loss": summary["final_loss"],
        "full_set_loss": {
            "before": round(initial, 5),
            "after": round(evaluation_loss(heads, pooled, sentences, label_tensor), 5),
            "note": "every drawn image with the first template, one batch; untrained vs trained",
        },
        "logit_scale": round(heads.logit_scale().item(), 4),
    }


def draw_images(
    labels: np.ndarray, class_names: list[str], counts: dict[str, int], seed: int
) -> tuple[list[int], list[int]]:
    """``counts[c]`` distinct training images of each class c (sorted indices, their labels)."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label, name in enumerate(class_names):
        pool = np.flatnonzero(labels == label)
        if counts[name] > pool.size:
            raise ValueError(f"class {name!r}: {counts[name]} images asked, {pool.size} available")
        chosen += rng.choice(pool, size=counts[name], replace=False).tolist()
    chosen.sort()
    return chosen, [int(labels[i]) for i in chosen]


@torch.no_grad()
def evaluation_loss(
    heads: ContrastiveHeads, pooled: torch.Tensor, sentences: torch.Tensor, labels: torch.Tensor
) -> float:
    """The contrastive loss over all drawn images at once with the first template."""
    return float(
        contrastive_loss(
            heads.embed_images(pooled),
            heads.embed_texts(sentences[0, labels]),
            labels,
            heads.logit_scale(),
        )
    )
