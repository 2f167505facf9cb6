"""What a fine-tuning job is asked to do (``FinetuneRequest``, stored as the analysis spec) and
where it runs (``FinetuneRuntime``): the records the trainer, its data-parallel form and the job
all read, kept apart from them so that each can import them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlmclf.analysis.finetune.data import CAPTION_TEMPLATE, CLASSIFICATION_QUESTION
from vlmclf.analysis.finetune.log import Schedule
from vlmclf.analysis.finetune.model import LoraTargets, Trainables, TrainParts
from vlmclf.run.loading import ModelOptions


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
    protocol: str = "clean"  # the table the settings were resolved from (paper.protocols)
    question: str = CLASSIFICATION_QUESTION  # the paper's fine-tuning data asks "the photo"
    prompt_template: str | None = None  # for training and evaluation; None: the family's
    eval_max_new_tokens: int | None = None  # the before/after runs' budget (None: eval's)

    def spec(self) -> dict[str, Any]:
        """The stored spec; the protocol's fields only where they differ from the defaults, so
        fine-tunes stored before they existed keep their ids."""
        spec = asdict(self)
        for name, default in _LATER_DEFAULTS.items():
            if spec[name] == default:
                del spec[name]
        return spec


_LATER_DEFAULTS = {"protocol": "clean", "question": CLASSIFICATION_QUESTION,
                   "prompt_template": None, "eval_max_new_tokens": None}  # fmt: skip


@dataclass(frozen=True)
class FinetuneRuntime:
    """Where and how; none of it changes the trained weights (micro-batching is exact)."""

    out_dir: Path
    store_path: Path = Path("vlmclf-runs.sqlite")
    micro_batch: int | None = None  # examples per model call (--batch-size); None: all at once
    eval_limit: int | None = None
    eval_batch_size: int = 8
    workers: int = 4
    progress: bool = False
    model_options: ModelOptions = field(default_factory=ModelOptions)
