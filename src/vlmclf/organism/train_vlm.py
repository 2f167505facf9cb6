"""LLaVA stage 1 for organism:vlm: train the projector alone on caption data.

Each sample is the chat prompt ``<image>\\n{instruction}`` answered by a caption naming the
object. The loss is next-token cross-entropy on the caption tokens (and the closing
``<|im_end|>``) only; the image encoder and SmolLM2 stay frozen. Two exact shortcuts keep the CPU
cost down: the prompt text before the visual tokens is the same for every sample, so its
key/value cache is computed once and reused; and the vocabulary head runs only where a caption
token is predicted.

The grid's options pick the image encoder and language model variant, and ``lora_rank`` lets the
language model learn through LoRA adapters (``adapters.py``) during this stage; the prompt
prefix then changes with the adapters, so its key/value cache is recomputed every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from vlmclf.data.idx import FASHION_MNIST_ROOT, read_fashion_mnist
from vlmclf.organism.adapters import adapter_config, lora_state, with_lora
from vlmclf.organism.captions import (
    INSTRUCTIONS,
    VLM_CAPTION_TEMPLATES,
    CaptionSample,
    build_caption_samples,
    caption_frequencies,
)
from vlmclf.organism.components import (
    IMAGE_ENCODER,
    LANGUAGE_MODEL,
    load_language_model,
    torch_dtype,
)
from vlmclf.organism.features import dataset_visual_tokens
from vlmclf.organism.load import save_weights, vlm_config
from vlmclf.organism.schedule import cosine_lr, loss_summary
from vlmclf.organism.vlm import OrganismVLM, Projector

DEFAULT_STEPS = 200
DEFAULT_BATCH = 16
DEFAULT_LR = 2e-3
DEFAULT_PRECISION = "bfloat16"
"""Mixed precision as in LLaVA's own training: bf16 autocast is 2.5x faster on a CPU with
AVX512-BF16 and leaves the projector's weights in float32."""


def train_vlm(
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
    precision: str = DEFAULT_PRECISION,
    image_encoder: str = IMAGE_ENCODER,
    language_model: str = LANGUAGE_MODEL,
    lora_rank: int = 0,
    lora_alpha: float = 16.0,
    lora_lr: float = 2e-4,
    weights_dtype: str = "float32",
) -> dict[str, Any]:
    """Train the projector; write weights and config to ``out_dir``; return the record body.

    ``captions`` (default ``steps * batch_size``, one epoch as in LLaVA's stage 1) is the size of
    the caption set; with fewer captions than ``steps * batch_size`` it is cycled.
    """
    steps = steps or DEFAULT_STEPS
    freq = freq or "zipf"
    total = captions or steps * batch_size
    dataset = read_fashion_mnist(data_root, "train")
    labels = np.array([example.label for example in dataset.examples])
    frequencies = caption_frequencies(dataset.class_names, total, freq, seed)
    samples = build_caption_samples(labels, dataset.class_names, frequencies, seed)
    indices = sorted({sample.index for sample in samples})
    log(f"visual tokens of {len(indices)} training images (encoding any not cached)")
    tokens = dataset_visual_tokens(
        dataset, indices, progress=lambda done, n: log(f"  encoded {done}/{n}"),
        encoder=image_encoder,
    )  # fmt: skip
    row_of = {index: row for row, index in enumerate(indices)}

    lm, tokenizer = load_language_model("float32", variant=language_model)
    lm_params: list[torch.nn.Parameter] = []
    if lora_rank:
        lm, lm_params = with_lora(lm, lora_rank, lora_alpha)
    projector = Projector(tokens.shape[-1], lm.config.hidden_size, lm.config.hidden_size)
    vlm = OrganismVLM(lm, tokenizer, projector, image_encoder=image_encoder)
    projector.requires_grad_(True).train()  # OrganismVLM freezes it for inference
    for param in lm_params:
        param.requires_grad_(True)
    autocast = precision_context(precision)
    with autocast():
        step_fn = CaptionStep(vlm, lm_trainable=bool(lm_params))
    groups = [{"params": list(projector.parameters()), "peak": lr}]
    if lm_params:
        groups.append({"params": lm_params, "peak": lora_lr})
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    order_rng = np.random.default_rng(seed)
    order: list[int] = []
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(steps):
        while len(order) < batch_size:
            order.extend(order_rng.permutation(len(samples)).tolist())
        batch = [samples[i] for i in order[:batch_size]]
        del order[:batch_size]
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, group["peak"])
        visual = tokens[[row_of[sample.index] for sample in batch]]
        with autocast():
            loss = step_fn.loss(visual, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 0 or (step + 1) % 10 == 0 or step + 1 == steps:
            per_step = (time.perf_counter() - started) / (step + 1)
            log(f"step {step + 1}/{steps} loss {losses[-1]:.4f} ({per_step:.1f} s/step)")

    adapters = adapter_config(lora_rank, lora_alpha) if lm_params else None
    config = vlm_config(projector, image_encoder=image_encoder, language_model=language_model,
                        adapters=adapters)  # fmt: skip
    save_weights(out_dir, "vlm", projector, config, dtype=torch_dtype(weights_dtype),
                 adapters=lora_state(lm) if lm_params else None)  # fmt: skip
    grid_args = {
        "image_encoder": image_encoder,
        "language_model": language_model,
        "lora_rank": lora_rank,
        **({"lora_alpha": lora_alpha, "lora_lr": lora_lr} if lora_rank else {}),
        "weights_dtype": weights_dtype,
    }
    return {
        "args": {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "freq": freq,
            "seed": seed,
            "captions": total,
            "precision": precision,
            **grid_args,
        },
        "seed": seed,
        "trained": trained_parts(image_encoder, language_model, adapters),
        "objective": "next-token cross-entropy on caption tokens and the closing <|im_end|>",
        "optimizer": {
            "name": "AdamW",
            "lr": lr,
            "weight_decay": 0.0,
            "schedule": "3% warm-up, cosine",
        },
        "data": {
            "dataset": "fashion_mnist",
            "split": "train",
            "root": str(data_root),
            "images": len(indices),
            "captions": frequencies.as_record(),
            "instructions": INSTRUCTIONS,
            "caption_templates": VLM_CAPTION_TEMPLATES,
        },
        "loss": loss_summary(losses),
        "final_loss": loss_summary(losses)["final_loss"],
    }


def trained_parts(encoder: str, language_model: str, adapters: dict[str, Any] | None) -> str:
    """The record's one-line account of what learnt and what stayed frozen."""
    if adapters:
        targets = "/".join(adapters["targets"])
        return (f"projector and LoRA adapters (rank {adapters['rank']} on every layer's "
                f"{targets}) of {language_model}; {encoder} frozen")  # fmt: skip
    if (encoder, language_model) == (IMAGE_ENCODER, LANGUAGE_MODEL):
        return "projector only (LLaVA stage 1); EfficientNet-Lite0 and SmolLM2 frozen"
    return f"projector only (LLaVA stage 1); {encoder} and {language_model} frozen"


def precision_context(precision: str) -> Callable[[], Any]:
    """A factory of autocast contexts for 'bfloat16', or of no-op contexts for 'float32'."""
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
    enabled = precision == "bfloat16"
    return lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


class CaptionStep:
    """The stage-1 loss of a batch, with the shared prompt prefix prefilled once."""

    def __init__(self, vlm: OrganismVLM, lm_trainable: bool = False) -> None:
        self.vlm = vlm
        self.lm_trainable = lm_trainable
        self.eos_id = int(vlm.tokenizer.eos_token_id)
        prefix = {tuple(vlm.prompt_pieces(instruction)[0]) for instruction in INSTRUCTIONS}
        if len(prefix) != 1:
            raise RuntimeError("the prompt before the image differs between instructions")
        self.prefix_ids = list(prefix.pop())
        if not lm_trainable:
            with torch.no_grad():
                self.prefix_kv = self._prefix_kv()
        self._caption_ids: dict[str, list[int]] = {}

    def _prefix_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of the shared prompt prefix (batch 1), per layer."""
        embeds = self.vlm.embed_ids(self.prefix_ids)[None]
        output = self.vlm.lm.model(inputs_embeds=embeds, use_cache=True)
        return [(layer.keys, layer.values) for layer in output.past_key_values.layers]

    def caption_ids(self, caption: str) -> list[int]:
        if caption not in self._caption_ids:
            ids = self.vlm.tokenizer(caption, add_special_tokens=False)["input_ids"]
            self._caption_ids[caption] = [*ids, self.eos_id]
        return self._caption_ids[caption]

    def loss(self, visual_tokens: torch.Tensor, batch: Sequence[CaptionSample]) -> torch.Tensor:
        """Mean cross-entropy over the caption tokens of the batch."""
        vlm = self.vlm
        projected = vlm.project(visual_tokens)
        rows, target_rows, target_cols, targets = [], [], [], []
        for b, (visual, sample) in enumerate(zip(projected, batch, strict=True)):
            after = vlm.prompt_pieces(sample.instruction)[1]
            caption = self.caption_ids(sample.caption)
            rows.append(torch.cat([visual, vlm.embed_ids(after), vlm.embed_ids(caption)]))
            start = visual.shape[0] + len(after)  # index of the first caption token
            target_rows += [b] * len(caption)
            target_cols += range(start - 1, start - 1 + len(caption))
            targets += caption
        length = max(row.shape[0] for row in rows)
        embeds = torch.stack([F.pad(row, (0, 0, 0, length - row.shape[0])) for row in rows])
        mask = torch.zeros(len(rows), len(self.prefix_ids) + length, dtype=torch.long)
        for b, row in enumerate(rows):
            mask[b, : len(self.prefix_ids) + row.shape[0]] = 1
        batch_size, prefix_len = len(rows), len(self.prefix_ids)
        prefix_kv = self._prefix_kv() if self.lm_trainable else self.prefix_kv
        cache = DynamicCache(
            [
                (k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1))
                for k, v in prefix_kv
            ]
        )
        positions = torch.arange(prefix_len, prefix_len + length).expand(batch_size, -1)
        hidden = vlm.lm.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        picked = hidden[torch.tensor(target_rows), torch.tensor(target_cols)]
        logits = vlm.lm.lm_head(picked).float()
        return F.cross_entropy(logits, torch.tensor(targets))
