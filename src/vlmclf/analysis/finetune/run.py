"""Does training on classification data close the gap? (paper, Section 4.2, Appendices C-D)

``run_finetune`` fine-tunes a VLM with the text-generation objective on classification data in
the template "<image> What type of object is in this photo? -> <class name>" (or caption-style
answers, optionally mixed with LLaVA-format instruction data), logs and plots the loss, stops
with a report if the loss diverges, saves a checkpoint that ``vlmclf eval --model`` loads, and,
with ``eval_limit``, measures generation accuracy before and after on the evaluation split.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmclf.analysis.finetune.data import (
    CAPTION_TEMPLATE,
    InstructionStats,
    TrainItem,
    batches_forever,
    classification_items,
    mix_in,
    read_llava_conversations,
)
from vlmclf.analysis.finetune.log import (
    DivergenceGuard,
    LossLog,
    Schedule,
    TrainingDiverged,
    lr_factor,
    plot_loss_curve,
    warmup_steps,
    write_divergence_report,
)
from vlmclf.analysis.finetune.model import (
    LoraSettings,
    LoraTargets,
    Trainable,
    Trainables,
    TrainParts,
    lora_settings,
    make_trainable,
)
from vlmclf.analysis.probe.features import weights_fingerprint
from vlmclf.data import load_dataset
from vlmclf.data.readers import parse_dataset_spec
from vlmclf.data.types import BadExampleError
from vlmclf.loading import ModelOptions, load_any_model
from vlmclf.runner import select_examples
from vlmclf.store import RunStore

__all__ = [
    "FinetuneOutcome", "FinetuneRequest", "FinetuneRuntime", "TrainingDiverged", "run_finetune",
]  # fmt: skip


@dataclass(frozen=True)
class FinetuneRequest:
    """What decides a fine-tuned model (stored as the analysis spec). Defaults are vlmclf's
    (1 epoch, LoRA rank 8 on attention); the paper's are in ``data/protocols/paper.json``."""

    model: str
    dataset: str
    train_split: str = "train"
    eval_split: str | None = None
    data_root: str | None = None
    train_data_root: str | None = None
    classes: str | None = None
    train: TrainParts = "projector"
    trainable: Trainables = "projector"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: LoraTargets = "attention"
    match: str = "contain"
    lr_projector: float = 2e-5
    lr_lora: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    schedule: Schedule = "cosine"
    batch_size: int = 64
    epochs: float = 1.0
    steps: int | None = None
    train_limit: int | None = None
    max_grad_norm: float = 1.0
    spike_factor: float = 5.0
    spike_window: int = 50
    grad_spike_factor: float = 100.0
    caption_data: bool = False
    caption_template: str = CAPTION_TEMPLATE
    mix_instructions: str | None = None
    mix_ratio: float = 0.5
    image_folder: str | None = None
    seed: int = 0

    def spec(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FinetuneRuntime:
    """Where and how; none of it changes the trained weights (micro-batching is exact)."""

    out_dir: Path
    store_path: Path = Path("vlmclf-runs.sqlite")
    micro_batch: int | None = None
    eval_limit: int | None = None
    eval_batch_size: int = 8
    workers: int = 4
    progress: bool = False
    model_options: ModelOptions = field(default_factory=ModelOptions)


@dataclass
class FinetuneOutcome:
    analysis_id: str
    result: dict[str, Any]
    files: dict[str, Path]
    checkpoint: str


ModelLoader = Callable[[str], object]


def training_items(request: FinetuneRequest) -> tuple[list[TrainItem], dict[str, Any]]:
    """Classification (or caption) items from the training split, plus instruction items."""
    name, _ = parse_dataset_spec(request.dataset)
    root = request.train_data_root or request.data_root
    data = load_dataset(name, root, request.train_split, request.classes)
    examples = select_examples(data, request.train_limit)
    template = request.caption_template if request.caption_data else None
    items = classification_items(examples, data.class_names, template)
    composition: dict[str, Any] = {"classification" if not template else "caption": len(items)}
    if request.mix_instructions:
        extra, stats = read_llava_conversations(request.mix_instructions, request.image_folder)
        mixed = mix_in(items, extra, request.mix_ratio, request.seed)
        composition["instruction"] = len(mixed) - len(items)
        composition["instruction_file"] = _instruction_summary(stats)
        items = mixed
    return items, composition


def _instruction_summary(stats: InstructionStats) -> dict[str, int]:
    return asdict(stats)


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
            chosen = [items[i] for i in next(order)]
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
                       "examples": len(batch.items) - skipped, "skipped_images": skipped,
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


def generation_accuracy(
    model_spec: str, request: FinetuneRequest, runtime: FinetuneRuntime
) -> dict[str, Any]:
    """Open-world generation accuracy on the evaluation split (``request.match``: containment,
    or the paper's exact match for fine-tuned models), through the runner of ``vlmclf eval``."""
    from vlmclf.methods import make_method
    from vlmclf.runner import RunConfig, run
    from vlmclf.spec import RunSpec

    name, spec_split = parse_dataset_spec(request.dataset)
    fingerprint = weights_fingerprint(model_spec)
    spec = RunSpec(
        model=model_spec, dataset=name, split=request.eval_split or spec_split, method="generate",
        seed=request.seed, dtype=runtime.model_options.dtype, match=request.match,
        options={"weights": fingerprint} if fingerprint else {},
    )  # fmt: skip
    config = RunConfig(
        store_path=runtime.store_path, data_root=request.data_root, classes=request.classes,
        limit=runtime.eval_limit, batch_size=runtime.eval_batch_size, progress=runtime.progress,
        model=runtime.model_options,
    )  # fmt: skip
    result = run(spec, config, make_method, on_warning=lambda message: None)
    summary = result.summary
    return {"model": model_spec, "run_id": result.run_id, "accuracy": summary.get("accuracy"),
            "n": summary.get("n"), "n_failed": summary.get("n_failed")}  # fmt: skip


def run_finetune(
    request: FinetuneRequest, runtime: FinetuneRuntime, load_model: ModelLoader | None = None
) -> FinetuneOutcome:
    """Fine-tune, save, evaluate before/after (with ``eval_limit``), store and report.

    Raises ``TrainingDiverged`` (after writing the loss log, its plot and ``divergence.json``
    and storing the analysis with status "diverged") if the guard stops the run."""
    _check(request)
    loader = load_model or (lambda spec: load_any_model(spec, runtime.model_options))
    items, composition = training_items(request)
    out_dir = runtime.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"model": request.model, "train": request.train,
                              "data": {**composition, "total_items": len(items)}}  # fmt: skip
    if runtime.eval_limit:
        result["before"] = generation_accuracy(request.model, request, runtime)
    files = {"log": out_dir / "train_log.csv", "figure": out_dir / "loss_curve.png"}
    trainable = make_trainable(
        loader(request.model), request.train, _lora(request), request.trainable
    )
    trainer = Trainer(trainable, request, runtime)
    log = LossLog(files["log"])
    started = time.perf_counter()
    try:
        steps = trainer.run(items, log, runtime.progress)
    except TrainingDiverged as stop:
        log.close()
        stop.report_path = files["divergence"] = write_divergence_report(stop.report, out_dir)
        title = f"{request.model} ({request.train})"
        plot_loss_curve(log.rows, files["figure"], title, stop.report)
        result.update(_loss_summary(log, time.perf_counter() - started, status="diverged"))
        result["divergence"] = stop.report.as_dict()
        _store(runtime, request, result)
        raise
    log.close()
    result.update(_loss_summary(log, time.perf_counter() - started, status="done"))
    checkpoint = trainable.save(out_dir)
    result["checkpoint"] = checkpoint
    plot_loss_curve(log.rows, files["figure"], f"{request.model} ({request.train}), {steps} steps")
    del trainable, trainer
    gc.collect()
    if runtime.eval_limit:
        result["after"] = _after_accuracy(checkpoint, request, runtime)
    analysis_id = _store(runtime, request, result)
    return FinetuneOutcome(analysis_id, result, files, checkpoint)


def _after_accuracy(checkpoint: str, request: FinetuneRequest, runtime: FinetuneRuntime) -> dict:
    """Accuracy of the saved checkpoint; a failure to load or run it is recorded, not raised,
    so the trained weights and their record are never lost to an evaluation problem."""
    try:
        return generation_accuracy(checkpoint, request, runtime)
    except Exception as err:  # noqa: BLE001 - reported in the result and printed
        return {"model": checkpoint, "error": f"{type(err).__name__}: {err}"}


def _check(request: FinetuneRequest) -> None:
    if request.batch_size < 1 or (request.steps is not None and request.steps < 1):
        raise ValueError("--batch-size and --steps must be at least 1")
    if request.steps is None and request.epochs <= 0:
        raise ValueError(f"--epochs must be positive, got {request.epochs}")
    if request.mix_instructions is None and request.image_folder is not None:
        raise ValueError("--image-folder is for --mix-instructions data")
    from vlmclf.methods.answer_mapping import parse_match_id

    parse_match_id(request.match)


def _lora(request: FinetuneRequest) -> LoraSettings:
    return lora_settings(
        request.lora_rank, request.lora_alpha, request.lora_dropout, request.lora_targets
    )


def _loss_summary(log: LossLog, seconds: float, status: str) -> dict[str, Any]:
    losses = [v for v in log.losses() if math.isfinite(v)]
    tail = losses[-max(1, len(losses) // 10) :] if losses else []
    return {
        "status": status,
        "steps": len(log.rows),
        "first_loss": losses[0] if losses else None,
        "final_loss": sum(tail) / len(tail) if tail else None,
        "wall_time_s": round(seconds, 2),
        "skipped_images": sum(int(row.get("skipped_images") or 0) for row in log.rows),
    }


def _store(runtime: FinetuneRuntime, request: FinetuneRequest, result: dict[str, Any]) -> str:
    spec = {**request.spec(), "out_dir": str(runtime.out_dir)}
    with RunStore(runtime.store_path) as store:
        return store.save_analysis("finetune", spec, result)
