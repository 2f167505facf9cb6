"""Does training on classification data close the gap? (paper, Section 4.2, Appendices C-D)

``run_finetune`` fine-tunes a VLM with the text-generation objective on classification data in
the template "<image> What type of object is in this photo? -> <class name>" (or caption-style
answers, optionally mixed with LLaVA-format instruction data), logs and plots the loss, stops
with a report if the loss diverges, saves a checkpoint that ``vlmclf eval --model`` loads, and,
with ``eval_limit``, measures generation accuracy before and after on the evaluation split.
"""

from __future__ import annotations

import gc
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from vlmclf.analysis.finetune.data import (
    CLASSIFICATION_QUESTION,
    InstructionStats,
    TrainItem,
    classification_items,
    mix_in,
    read_llava_conversations,
)
from vlmclf.analysis.finetune.log import (
    LossLog,
    TrainingDiverged,
    plot_loss_curve,
    write_divergence_report,
)
from vlmclf.analysis.finetune.model import (
    LoraSettings,
    Trainable,
    lora_settings,
    make_trainable,
)
from vlmclf.analysis.finetune.parallel import DistributedTrainer
from vlmclf.analysis.finetune.request import FinetuneRequest, FinetuneRuntime
from vlmclf.analysis.finetune.trainer import Trainer, total_steps
from vlmclf.analysis.probe.features import weights_fingerprint
from vlmclf.data import load_dataset
from vlmclf.data.readers import parse_dataset_spec
from vlmclf.run.distributed import (
    every_rank,
    from_main,
    is_distributed,
    is_main_process,
    on_main,
    place,
)
from vlmclf.run.identity import environment_facts
from vlmclf.run.loading import load_any_model
from vlmclf.run.runner import select_examples
from vlmclf.store import RunStore

__all__ = [
    "FinetuneOutcome", "FinetuneRequest", "FinetuneRuntime", "Trainer", "TrainingDiverged",
    "run_finetune", "total_steps",
]  # fmt: skip


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
    items = classification_items(examples, data.class_names, template, request.question)
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


def generation_accuracy(
    model_spec: str, request: FinetuneRequest, runtime: FinetuneRuntime,
    model: object | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Open-world generation accuracy on the evaluation split (``request.match``: containment,
    or the paper's exact match for fine-tuned models), through the runner of ``vlmclf eval``
    (sharded across the ranks under torchrun). ``model``: the loaded model to use for
    ``model_spec`` instead of loading it."""
    from vlmclf.methods import make_method
    from vlmclf.run.runner import RunConfig, run
    from vlmclf.spec import RunSpec

    name, spec_split = parse_dataset_spec(request.dataset)
    fingerprint = from_main(lambda: weights_fingerprint(model_spec))  # the main node's files
    spec = RunSpec(
        model=model_spec, dataset=name, split=request.eval_split or spec_split, method="generate",
        seed=request.seed, dtype=runtime.model_options.dtype, match=request.match,
        options={"weights": fingerprint} if fingerprint else {}, **_eval_prompt(request),
    )  # fmt: skip
    config = RunConfig(
        store_path=runtime.store_path, data_root=request.data_root, classes=request.classes,
        limit=runtime.eval_limit, batch_size=runtime.eval_batch_size, progress=runtime.progress,
        model=runtime.model_options,
    )  # fmt: skip
    loader = {} if model is None else {"load_model": lambda spec, options: model}
    result = run(spec, config, make_method, on_warning=lambda message: None, **loader)
    summary = result.summary
    return {"model": model_spec, "run_id": result.run_id, "accuracy": summary.get("accuracy"),
            "n": summary.get("n"), "n_failed": summary.get("n_failed")}  # fmt: skip


def _eval_prompt(request: FinetuneRequest) -> dict[str, Any]:
    """The before/after runs ask as training asked: the request's question in its template,
    with its token budget (the paper's model_vqa.py: vicuna_v1, greedy, 1024 new tokens)."""
    chosen: dict[str, Any] = {}
    if request.question != CLASSIFICATION_QUESTION:
        chosen["prompt"] = request.question
    if request.prompt_template is not None:
        chosen["prompt_template"] = request.prompt_template
    if request.eval_max_new_tokens is not None:
        chosen["max_new_tokens"] = request.eval_max_new_tokens
    if request.protocol != "clean":
        chosen["protocol"] = request.protocol
    return chosen


def run_finetune(
    request: FinetuneRequest, runtime: FinetuneRuntime, load_model: ModelLoader | None = None
) -> FinetuneOutcome | None:
    """Fine-tune, save, evaluate before/after (with ``eval_limit``), store and report.

    Raises ``TrainingDiverged`` (after writing the loss log, its plot and ``divergence.json``
    and storing the analysis with status "diverged") if the guard stops the run.

    Under torchrun every rank trains its own copy on its share of each batch (``parallel.py``)
    and evaluates with it; the main rank alone writes the log, the checkpoint, the figure and
    the store, and returns the outcome (the others return None)."""
    _check(request)
    loader = load_model or (lambda spec: load_any_model(spec, runtime.model_options))
    items, composition = every_rank(lambda: training_items(request))
    digest = from_main(lambda: items_digest(items))
    every_rank(lambda: check_same_items(items, digest))
    main = is_main_process()
    out_dir = runtime.out_dir
    result: dict[str, Any] = {"model": request.model, "train": request.train,
                              "data": {**composition, "total_items": len(items)}}  # fmt: skip
    if runtime.eval_limit:
        result["before"] = generation_accuracy(request.model, request, runtime)
    files = {"log": out_dir / "train_log.csv", "figure": out_dir / "loss_curve.png"}
    trainable, trainer = every_rank(lambda: _trainer(loader, request, runtime))
    if isinstance(trainer, DistributedTrainer):
        trainer.connect()  # once every rank has its model: DDP starts from rank 0's values
    log = LossLog(files["log"] if main else None)
    started = time.perf_counter()
    try:
        steps = trainer.run(items, log, runtime.progress and main)
    except TrainingDiverged as stop:  # every rank stops at the same step, on the same numbers
        log.close()
        diverged = stop

        def record() -> None:
            report = diverged.report
            diverged.report_path = files["divergence"] = write_divergence_report(report, out_dir)
            plot_loss_curve(log.rows, files["figure"], f"{request.model} ({request.train})", report)
            result.update(_loss_summary(log, time.perf_counter() - started, status="diverged"))
            result["divergence"] = report.as_dict()
            diverged.analysis_id = _store(runtime, request, result)

        on_main(record)  # the others wait: torchrun stops the job when the first rank exits
        raise
    log.close()
    result.update(_loss_summary(log, time.perf_counter() - started, status="done"))
    save = partial(_save, trainable, log, steps, request, files, out_dir)
    result["checkpoint"] = checkpoint = from_main(save)
    trainable.finish()  # the others' copies as the checkpoint holds them (saving did it here)
    trained = trainable.inference_model() if is_distributed() else None
    del trainable, trainer
    gc.collect()
    if runtime.eval_limit:
        result["after"] = _after_accuracy(checkpoint, request, runtime, trained)
    if not main:
        return None
    analysis_id = _store(runtime, request, result)
    return FinetuneOutcome(analysis_id, result, files, checkpoint)


def _trainer(
    loader: ModelLoader, request: FinetuneRequest, runtime: FinetuneRuntime
) -> tuple[Trainable, Trainer]:
    """The model's trainable view and its optimisation loop: a DistributedTrainer (joined to
    the other ranks by the caller) under torchrun."""
    model = loader(request.model)
    if request.prompt_template is not None:  # the protocol's conversation, for every item
        if not hasattr(model, "prompt_template"):
            raise ValueError(f"{request.model}: this model takes no prompt template")
        model.prompt_template = request.prompt_template  # type: ignore[attr-defined]
    trainable = make_trainable(model, request.train, _lora(request), request.trainable)
    if not is_distributed():
        return trainable, Trainer(trainable, request, runtime)
    return trainable, DistributedTrainer(trainable, request, runtime)


def _save(
    trainable: Trainable, log: LossLog, steps: int, request: FinetuneRequest,
    files: dict[str, Path], out_dir: Path,
) -> str:  # fmt: skip
    """The checkpoint and the loss figure (the main rank's work)."""
    checkpoint = trainable.save(out_dir)
    plot_loss_curve(log.rows, files["figure"], f"{request.model} ({request.train}), {steps} steps")
    return checkpoint


def items_digest(items: list[TrainItem]) -> str:
    text = "\n".join(f"{item.id}\t{item.question}\t{item.answer}" for item in items)
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_items(items: list[TrainItem], digest: str) -> None:
    if items_digest(items) != digest:
        raise ValueError(
            f"rank {place().rank} built other training items than the main rank; every node "
            "must see the same dataset"
        )


def _after_accuracy(
    checkpoint: str, request: FinetuneRequest, runtime: FinetuneRuntime, trained: object | None
) -> dict:
    """Accuracy of the saved checkpoint (under torchrun: of each rank's trained copy, equal to
    it, so the checkpoint need only be on the main node); a failure to load or run it is
    recorded, not raised, so the trained weights and their record are never lost to an
    evaluation problem."""
    try:
        return generation_accuracy(checkpoint, request, runtime, trained)
    except Exception as err:  # noqa: BLE001 - reported in the result and printed
        return {"model": checkpoint, "error": f"{type(err).__name__}: {err}"}


def _check(request: FinetuneRequest) -> None:
    if request.batch_size < 1 or (request.steps is not None and request.steps < 1):
        raise ValueError("--step-batch-size and --steps must be at least 1")
    if request.steps is None and request.epochs <= 0:
        raise ValueError(f"--epochs must be positive, got {request.epochs}")
    if request.mix_instructions is None and request.image_folder is not None:
        raise ValueError("--image-folder is for --mix-instructions data")
    from vlmclf.methods.answer_mapping import parse_match_id

    parse_match_id(request.match)


def _lora(request: FinetuneRequest) -> LoraSettings:
    return lora_settings(
        request.lora_rank, request.lora_alpha, request.lora_dropout, request.lora_targets,
        request.seed,
    )  # fmt: skip


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
    """Store the analysis, the environment it trained in (versions, CPU threads) beside it."""
    result["environment"] = environment_facts(runtime.model_options.device)
    spec = {**request.spec(), "out_dir": str(runtime.out_dir)}
    with RunStore(runtime.store_path) as store:
        return store.save_analysis("finetune", spec, result)
