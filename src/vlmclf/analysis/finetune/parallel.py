"""Fine-tuning on the ranks of a torchrun job: DistributedDataParallel over the trained parameters.

Every rank holds a whole model on its own device and draws the same batches (the seeded order of
``batches_forever``); rank r trains on the r-th contiguous block of each batch (block sizes
differ by at most one). The loss of a rank's block is its summed answer-token loss divided by
the answer tokens of the whole batch, counted over all ranks, and torch DDP sums (not averages:
``sum_gradients``) the ranks' gradients, so the result is the gradient of the batch's mean token
loss: the gradient one process computes with ``--batch-size`` equal to the block size, up to
the order of the float sums. Each rank then clips and steps its own optimiser on the same
gradients, so the copies stay equal.

DDP wraps a small module holding only the trained parameters (the projector, the Q-Former, the
LoRA adapters): constructing it broadcasts rank 0's values of exactly those, and its forward is
the trainable's loss on a micro-batch. A rank with no image to train on in a step still joins
the gradient all-reduce with a zero loss. Loading and the forward passes of a step are run with
failure sharing (``vlmclf.run.distributed``), so a rank that raises stops every rank at the same
point, with its error, before anyone enters the all-reduce.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vlmclf.analysis.finetune.model import Trainable
from vlmclf.analysis.finetune.trainer import LoadedBatch, Trainer
from vlmclf.run.distributed import ensure_process_group, every_rank_gathered, place

if TYPE_CHECKING:
    from vlmclf.analysis.finetune.request import FinetuneRequest, FinetuneRuntime


def rank_block(indices: list[int], rank: int, world_size: int) -> list[int]:
    """The ``rank``-th of ``world_size`` contiguous blocks of ``indices`` (the first
    ``len % world_size`` blocks one longer)."""
    base, extra = divmod(len(indices), world_size)
    start = rank * base + min(rank, extra)
    return indices[start : start + base + (rank < extra)]


def sum_gradients(state, bucket):  # type: ignore[no-untyped-def]
    """DDP's communication: the sum of the ranks' gradients, not their mean (each rank's loss is
    already divided by the whole batch's tokens, exactly as one process divides it). Takes a
    ``dist.GradBucket``, returns a ``Future`` of the reduced tensor; not annotated because DDP
    checks the annotations as objects, and this file's are strings."""
    reduced = dist.all_reduce(bucket.buffer(), async_op=True)
    return reduced.get_future().then(lambda done: done.value()[0])  # type: ignore[union-attr]


class TrainedParameters(nn.Module):
    """The parameters being trained, as the module DDP wraps; its forward is the trainable's
    summed answer-token loss on a micro-batch."""

    def __init__(self, trainable: Trainable, params: list[nn.Parameter]) -> None:
        super().__init__()
        self.trainable = trainable  # not a Module: its frozen weights stay outside DDP
        self.trained = nn.ParameterList(params)

    def forward(self, images: list, questions: list[str], answers: list[list[int]]) -> Any:
        if images:
            summed, _ = self.trainable.batch_loss(images, questions, answers)
            return summed
        # nothing to learn from on this rank: a zero that still reaches every parameter
        return torch.stack([(p * 0).sum() for p in self.trained]).sum()


class DistributedTrainer(Trainer):
    """``Trainer`` with each batch split across the ranks and the gradients all-reduced."""

    def __init__(
        self, trainable: Trainable, request: FinetuneRequest, runtime: FinetuneRuntime
    ) -> None:
        super().__init__(trainable, request, runtime)
        self.place = place()
        self.ddp: DistributedDataParallel | None = None

    def connect(self) -> None:
        """Wrap the trained parameters in DDP (a collective: rank 0's values go to all).
        Called once every rank has built its trainer."""
        ensure_process_group()
        module = TrainedParameters(self.trainable, self.params)
        self.ddp = DistributedDataParallel(module, device_ids=None)  # it holds no buffers
        self.ddp.register_comm_hook(None, sum_gradients)

    def share(self, indices: list[int]) -> list[int]:
        return rank_block(indices, self.place.rank, self.place.world_size)

    def accumulate(self, batch: LoadedBatch) -> tuple[float, int, int]:
        """Gradients of the whole batch's mean answer-token loss on every rank; (loss, tokens,
        skipped images), all counted over the whole batch."""

        def load() -> tuple[tuple, tuple[int, int]]:
            images, kept, skipped = batch.collect()
            answers = self._answers(kept)
            return (images, kept, answers), (sum(len(a) for a in answers), skipped)

        (images, kept, answers), counts = every_rank_gathered(load)
        total_tokens = sum(tokens for tokens, _ in counts)
        skipped = sum(lost for _, lost in counts)
        if total_tokens == 0:  # no image of the batch loaded on any rank: every rank skips
            return math.nan, 0, skipped
        last, loss_sums = every_rank_gathered(
            lambda: self._forward(images, kept, answers, total_tokens)
        )
        (last / total_tokens).backward()  # DDP sums the ranks' gradients here
        return sum(loss_sums) / total_tokens, total_tokens, skipped

    def _forward(
        self, images: list, kept: list, answers: list[list[int]], total_tokens: int
    ) -> tuple[torch.Tensor, float]:
        """Forward every micro-batch of this rank's block, backward all but the last without
        synchronising; (the last micro-batch's summed loss, this rank's summed loss)."""
        assert self.ddp is not None, "connect() first"
        starts = list(range(0, len(kept), self.micro)) or [0]
        loss_sum = 0.0
        for start in starts[:-1]:
            part = slice(start, start + self.micro)
            with self.ddp.no_sync():
                summed = self.ddp(images[part], [i.question for i in kept[part]], answers[part])
                (summed / total_tokens).backward()
            loss_sum += float(summed.detach())
        part = slice(starts[-1], starts[-1] + self.micro)
        last = self.ddp(images[part], [i.question for i in kept[part]], answers[part])
        loss_sum += float(last.detach())
        return last, loss_sum
