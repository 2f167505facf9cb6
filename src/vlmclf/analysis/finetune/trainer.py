"""The optimisation loop of ``vlmclf finetune`` in one process (``parallel.py`` extends it to
the ranks of a torchrun job)."""

from __future__ import annotations

import math
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from vlmclf.analysis.finetune.data import TrainItem, batches_forever
from vlmclf.analysis.finetune.log import (
    DivergenceGuard,
    LossLog,
    TrainingDiverged,
    lr_factor,
    warmup_steps,
)
from vlmclf.analysis.finetune.model import Trainable
from vlmclf.data.types import BadExampleError

if TYPE_CHECKING:
    from vlmclf.analysis.finetune.request import FinetuneRequest, FinetuneRuntime


def total_steps(request: FinetuneRequest, n_items: int) -> int:
    if request.steps is not None:
        return request.steps
    return max(1, math.ceil(request.epochs * n_items / request.batch_size))


def _load_one(item: TrainItem) -> Image.Image | None:
    try:
        return item.loader()
    except BadExampleError:
        return None


@dataclass
class LoadedBatch:
    """A batch whose images are decoding in worker threads while the previous step trains."""

    items: list[TrainItem]
    futures: list[Future]

    def collect(self) -> tuple[list[Image.Image], list[TrainItem], int]:
        """(images, their items, how many failed to load and were skipped)."""
        images, kept = [], []
        for item, future in zip(self.items, self.futures, strict=True):
            image = future.result()
            if image is not None:
                images.append(image)
                kept.append(item)
        return images, kept, len(self.items) - len(kept)


class Trainer:
    """The optimisation loop: AdamW with per-part learning rates, warm-up then decay, gradient
    accumulation over micro-batches (exact: the loss is normalised by the batch's answer
    tokens), clipping, the divergence guard and the loss log."""

    def __init__(self, trainable: Trainable, request: FinetuneRequest, runtime: FinetuneRuntime):
        self.trainable = trainable
        self.request = request
        self.micro = runtime.micro_batch or request.batch_size
        self.workers = max(1, runtime.workers)
        groups = trainable.parameter_groups(request.lr_projector, request.lr_lora)
        self.peaks = {group["name"]: group["lr"] for group in groups}
        self.params = [p for group in groups for p in group["params"]]
        self.optimiser = torch.optim.AdamW(groups, weight_decay=request.weight_decay)
        self.answer_cache: dict[tuple[str, str], list[int]] = {}

    def _answers(self, items: list[TrainItem]) -> list[list[int]]:
        out = []
        for item in items:
            key = (item.question, item.answer)
            if key not in self.answer_cache:
                self.answer_cache[key] = self.trainable.answer_ids(item.question, item.answer)
            out.append(self.answer_cache[key])
        return out

    def _set_lrs(self, step: int, total: int, warmup: int) -> dict[str, float]:
        factor = lr_factor(step, total, warmup, self.request.schedule)
        for group in self.optimiser.param_groups:
            group["lr"] = self.peaks[group["name"]] * factor
        return {group["name"]: group["lr"] for group in self.optimiser.param_groups}

    def share(self, indices: list[int]) -> list[int]:
        """The items of a step's batch this process trains on: all of them in one process."""
        return indices

    def accumulate(self, batch: LoadedBatch) -> tuple[float, int, int]:
        """Gradients of the batch's mean answer-token loss; (loss, tokens, skipped images)."""
        images, kept, skipped = batch.collect()
        if not kept:
            return math.nan, 0, skipped
        answers = self._answers(kept)
        total_tokens = sum(len(a) for a in answers)
        loss_sum = 0.0
        for start in range(0, len(kept), self.micro):
            part = slice(start, start + self.micro)
            questions = [item.question for item in kept[part]]
            summed, _ = self.trainable.batch_loss(images[part], questions, answers[part])
            (summed / total_tokens).backward()
            loss_sum += float(summed.detach())
        return loss_sum / total_tokens, total_tokens, skipped

    def run(self, items: list[TrainItem], log: LossLog, progress: bool) -> int:
        """Train for the requested steps; returns the steps done or raises TrainingDiverged."""
        total = total_steps(self.request, len(items))
        warmup = warmup_steps(total, self.request.warmup_ratio)
        guard = DivergenceGuard(
            warmup, self.request.spike_factor, self.request.spike_window,
            grad_spike_factor=self.request.grad_spike_factor,
        )  # fmt: skip
        order = batches_forever(len(items), self.request.batch_size, self.request.seed)
        pool = ThreadPoolExecutor(max_workers=self.workers)

        def submit() -> LoadedBatch:
            chosen = [items[i] for i in self.share(next(order))]
            return LoadedBatch(chosen, [pool.submit(_load_one, item) for item in chosen])

        started = time.perf_counter()
        self.trainable.set_training(True)
        upcoming = submit()
        try:
            for step in range(1, total + 1):
                lrs = self._set_lrs(step - 1, total, warmup)
                self.optimiser.zero_grad(set_to_none=True)
                batch, upcoming = upcoming, (submit() if step < total else None)
                loss, tokens, skipped = self.accumulate(batch)
                if tokens == 0:  # every image of the batch failed to load: nothing to learn
                    empty = {"step": step, "loss": math.nan, "skipped_images": skipped}
                    log.append({**empty, "lr_projector": lrs.get("projector"),
                                "lr_lora": lrs.get("lora")})  # fmt: skip
                    continue
                report = guard.check_loss(step, loss, lrs)
                norm = torch.nn.utils.clip_grad_norm_(self.params, self.request.max_grad_norm)
                grad_norm = float(norm)
                report = report or guard.check_grad(step, loss, grad_norm, lrs)
                row = {"step": step, "loss": loss, "lr_projector": lrs.get("projector"),
                       "lr_lora": lrs.get("lora"), "grad_norm": grad_norm, "tokens": tokens,
                       "examples": self.request.batch_size - skipped, "skipped_images": skipped,
                       "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip
                log.append(row)
                if report is not None:
                    raise TrainingDiverged(report)
                self.optimiser.step()
                if progress:
                    print(f"step {step}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.optimiser.zero_grad(set_to_none=True)
            self.trainable.set_training(False)
        return total
