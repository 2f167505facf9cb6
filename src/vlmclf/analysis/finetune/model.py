"""What fine-tuning trains, and how a batch becomes a loss, for each kind of open-weight VLM.

The sequence trained on is the one inference builds: the family's prompt with the image placed
by the wrapper (``build_inputs`` for transformers models, ``embeddings_from_visual_tokens`` for
the organism), then the answer's tokens as the model emits them after that prompt, prefilled
as generation prefills it (``continuation_tokens``), and the end-of-sequence token.
Labels are -100 on the prompt and the padding, so the loss is on the answer only.

Trainable parts: the projector (LLaVA's ``multi_modal_projector``, Qwen2-VL's visual
``merger``, the organism's MLP), with ``trainable="qformer"`` also BLIP-2's / InstructBLIP's
Q-Former and its query tokens (the vision tower stays frozen, as in the paper's BLIP-2 run), and
with ``projector+lora`` also LoRA adapters on the language model (its attention projections, or
with ``targets="all-linear"`` every linear layer, the paper's setting), merged into the weights
when the checkpoint is saved.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlmclf.methods.likelihood.compat import (
    answer_token_type,
    last_token_inputs,
    repeat_last_token_inputs,
)
from vlmclf.methods.likelihood.targets import continuation_tokens

TrainParts = Literal["projector", "projector+lora"]
Trainables = Literal["projector", "qformer"]
LoraTargets = Literal["attention", "all-linear"]
IGNORE = -100
PROJECTOR_PATHS = ("model.multi_modal_projector", "multi_modal_projector", "model.visual.merger",
                   "visual.merger", "model.language_projection", "language_projection",
                   "model.connector")  # fmt: skip
"""Where transformers VLMs keep the vision-to-language projector (first match wins)."""
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
QFORMER_PATHS = ("model.qformer", "qformer")
QUERY_TOKEN_PATHS = ("model.query_tokens", "query_tokens")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = LORA_TARGETS
    """Module-name suffixes adapted; empty: every ``nn.Linear`` of the language model."""
    seed: int = 0
    """Seed of the adapters' initial weights: the same run starts from the same adapters in
    every process (the global torch RNG is seeded afresh in each one)."""


def lora_settings(
    rank: int, alpha: int, dropout: float, targets: LoraTargets, seed: int = 0
) -> LoraSettings:
    """``attention``: q, k, v, o projections; ``all-linear``: every linear layer of the LM."""
    if targets not in ("attention", "all-linear"):
        raise ValueError(f"--lora-targets must be 'attention' or 'all-linear', got {targets!r}")
    adapted = LORA_TARGETS if targets == "attention" else ()
    return LoraSettings(rank, alpha, dropout, adapted, seed)


class Trainable(Protocol):
    """A model being fine-tuned: parameter groups, a loss on a batch, and a way to save it."""

    name: str

    def parameter_groups(self, lr_projector: float, lr_lora: float) -> list[dict[str, Any]]: ...

    def answer_ids(self, question: str, answer: str) -> list[int]: ...

    def batch_loss(
        self, images: list[Image.Image], questions: list[str], answers: list[list[int]]
    ) -> tuple[torch.Tensor, int]: ...

    def set_training(self, on: bool) -> None: ...

    def finish(self) -> None: ...

    def inference_model(self) -> Any: ...

    def save(self, out_dir: Path) -> str: ...


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions, and how many there were."""
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:].to(logits.device)
    total = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]), shifted_labels.reshape(-1),
        ignore_index=IGNORE, reduction="sum",
    )  # fmt: skip
    return total, int((shifted_labels != IGNORE).sum())


def answer_tail(answers: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of the answers, right-padded to the longest."""
    length = max(len(a) for a in answers)
    ids = torch.full((len(answers), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(answers), length), dtype=torch.long)
    for row, answer in enumerate(answers):
        ids[row, : len(answer)] = torch.tensor(answer, dtype=torch.long)
        mask[row, : len(answer)] = 1
    return ids, mask


def answer_labels(tail: torch.Tensor, tail_mask: torch.Tensor) -> torch.Tensor:
    return tail.masked_fill(tail_mask == 0, IGNORE)


@contextmanager
def _seeded(model: nn.Module, seed: int) -> Iterator[None]:
    """The global RNGs (CPU and the model's GPUs) seeded with ``seed`` inside, restored after."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _eos_id(generation_config: Any, tokenizer: Any) -> int:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if isinstance(eos, list):
        eos = eos[0]
    if eos is None:
        raise ValueError("the tokenizer has no end-of-sequence token: the answer could not end")
    return int(eos)


def _attribute(root: Any, dotted: str) -> Any:
    node = root
    for part in dotted.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def _resolve(root: nn.Module, candidates: tuple[str, ...]) -> tuple[str, nn.Module]:
    for dotted in candidates:
        node: Any = root
        for part in dotted.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, nn.Module):
            return dotted, node
    raise ValueError(
        f"{type(root).__name__}: no vision-language projector found (looked for {candidates})"
    )


class HFTrainable:
    """A transformers VLM wrapper (``HFVisionLanguageModel``) being fine-tuned."""

    def __init__(
        self, wrapper: Any, parts: TrainParts, lora: LoraSettings | None = None,
        trainable: Trainables = "projector",
    ):  # fmt: skip
        self.wrapper = wrapper
        self.name = wrapper.name
        self.parts = parts
        model = wrapper.model
        model.requires_grad_(False)
        self.projector_path, self.projector = _resolve(model, PROJECTOR_PATHS)
        self.extra_parameters = self._qformer_parameters(model) if trainable == "qformer" else []
        self._unfreeze()
        self.peft_model: Any = None
        if parts == "projector+lora":
            self.peft_model = self._add_lora(model, lora or LoraSettings())
            self._unfreeze()  # peft freezes everything it did not add
        self.eos_id = _eos_id(model.generation_config, wrapper.tokenizer)
        self.pad_id = int(wrapper.tokenizer.pad_token_id)

    def _qformer_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The Q-Former's weights and its learned query tokens (BLIP-2, InstructBLIP)."""
        try:
            _, qformer = _resolve(model, QFORMER_PATHS)
        except ValueError:
            raise ValueError(
                f"--trainable qformer: {self.name} has no Q-Former (BLIP-2 and InstructBLIP do)"
            ) from None
        queries = [
            node for dotted in QUERY_TOKEN_PATHS
            if isinstance(node := _attribute(model, dotted), nn.Parameter)
        ][:1]  # fmt: skip
        return [*qformer.parameters(), *queries]

    def _unfreeze(self) -> None:
        self.projector.requires_grad_(True)
        for parameter in self.extra_parameters:
            parameter.requires_grad_(True)

    def _add_lora(self, model: nn.Module, lora: LoraSettings) -> Any:
        from peft import LoraConfig, get_peft_model

        lm_path = self.wrapper.adapter.language_model_path
        if lora.targets:
            suffixes = "|".join(map(re.escape, lora.targets))
            pattern = rf"^{re.escape(lm_path)}\..*\.({suffixes})$"
        else:  # every linear layer of the language model (lm_head lies outside it)
            names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
                     and n.startswith(f"{lm_path}.")]  # fmt: skip
            pattern = rf"^({'|'.join(map(re.escape, names))})$"
        config = LoraConfig(
            r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=pattern, bias="none",
        )  # fmt: skip
        with warnings.catch_warnings(), _seeded(model, lora.seed):
            # peft reads a property transformers 5 deprecates
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            return get_peft_model(model, config)

    def lora_parameters(self) -> list[nn.Parameter]:
        if self.peft_model is None:
            return []
        named = self.peft_model.named_parameters()
        return [p for n, p in named if "lora_" in n and p.requires_grad]

    def parameter_groups(self, lr_projector: float, lr_lora: float) -> list[dict[str, Any]]:
        projector = [*self.projector.parameters(), *self.extra_parameters]
        groups = [{"name": "projector", "params": projector, "lr": lr_projector}]
        if self.peft_model is not None:
            groups.append({"name": "lora", "params": self.lora_parameters(), "lr": lr_lora})
        return groups

    def answer_ids(self, question: str, answer: str) -> list[int]:
        context = self.wrapper.format_prompt(question)
        tokens = continuation_tokens(self.wrapper.tokenizer, context, [answer])[answer]
        return [*tokens, self.eos_id]

    def batch_loss(
        self, images: list[Image.Image], questions: list[str], answers: list[list[int]]
    ) -> tuple[torch.Tensor, int]:
        inputs = dict(self.wrapper.build_inputs(images, questions))
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        tail, tail_mask = answer_tail(answers, self.pad_id)
        tail, tail_mask = tail.to(ids.device), tail_mask.to(mask.device)
        repeated = last_token_inputs(inputs)  # Mllama: the answer reads the prompt's image tiles
        for key, value in repeat_last_token_inputs(repeated, len(answers), tail.shape[1]).items():
            inputs[key] = torch.cat([inputs[key], value], dim=1)
        labels = torch.cat([torch.full_like(ids, IGNORE), answer_labels(tail, tail_mask)], dim=1)
        inputs["input_ids"] = torch.cat([ids, tail], dim=1)
        inputs["attention_mask"] = torch.cat([mask, tail_mask], dim=1)
        answer_type = answer_token_type(self.wrapper.model)  # PaliGemma: 1, the causal part
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in inputs and inputs[key].shape == ids.shape:
                typed = torch.zeros_like(tail) + (answer_type if key == "token_type_ids" else 0)
                inputs[key] = torch.cat([inputs[key], typed], dim=1)
        kwargs = self.wrapper.forward_inputs(inputs)
        output = self.wrapper.model(**kwargs, use_cache=False)
        return token_loss_sum(output.logits, labels)

    def set_training(self, on: bool) -> None:
        self.wrapper.model.train(on)

    def finish(self) -> None:
        """Merge LoRA into the weights and freeze: the model as the checkpoint holds it."""
        model = self.wrapper.model
        if self.peft_model is not None:
            model = self.peft_model.merge_and_unload()
            self.peft_model = None
            self.wrapper.model = model
        model.eval().requires_grad_(False)

    def inference_model(self) -> Any:
        """The wrapper that classifies with the trained weights (after ``finish``)."""
        return self.wrapper

    def save(self, out_dir: Path) -> str:
        """Merge LoRA into the weights and save the whole model + processor: ``hf:<out_dir>``."""
        self.finish()
        model = self.wrapper.model
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        self.wrapper.processor.save_pretrained(out_dir)
        return f"hf:{out_dir}"


class OrganismTrainable:
    """organism:vlm: the projector is trained; the image encoder and SmolLM2 stay frozen."""

    def __init__(self, organism: Any, parts: TrainParts):
        if parts != "projector":
            raise ValueError(
                "organism:vlm fine-tunes its projector only (--train projector); its checkpoint "
                "format holds no language-model weights for merged LoRA adapters"
            )
        self.organism = organism
        self.name = organism.name
        organism.lm.requires_grad_(False)
        organism.projector.requires_grad_(True)
        tokenizer = organism.tokenizer
        self.eos_id = _eos_id(None, tokenizer)
        self.pad_id = organism.pad_token_id

    def parameter_groups(self, lr_projector: float, lr_lora: float) -> list[dict[str, Any]]:
        return [{"name": "projector", "params": list(self.organism.projector.parameters()),
                 "lr": lr_projector}]  # fmt: skip

    def answer_ids(self, question: str, answer: str) -> list[int]:
        context = self.organism.format_prompt(question)
        tokens = continuation_tokens(self.organism.tokenizer, context, [answer])[answer]
        return [*tokens, self.eos_id]

    def batch_loss(
        self, images: list[Image.Image], questions: list[str], answers: list[list[int]]
    ) -> tuple[torch.Tensor, int]:
        organism = self.organism
        visual = organism.visual_tokens(images)
        embeds, mask = organism.embeddings_from_visual_tokens(visual, questions)
        tail, tail_mask = answer_tail(answers, self.pad_id)
        tail, tail_mask = tail.to(mask.device), tail_mask.to(mask.device)
        tail_embeds = organism.lm.get_input_embeddings()(tail).to(embeds.dtype)
        labels = torch.cat([torch.full_like(mask, IGNORE), answer_labels(tail, tail_mask)], dim=1)
        output = organism.forward(
            torch.cat([embeds, tail_embeds], dim=1), torch.cat([mask, tail_mask], dim=1),
            use_cache=False,
        )  # fmt: skip
        return token_loss_sum(output.logits, labels)

    def set_training(self, on: bool) -> None:
        self.organism.projector.train(on)

    def finish(self) -> None:
        self.organism.projector.eval().requires_grad_(False)

    def inference_model(self) -> Any:
        return self.organism

    def save(self, out_dir: Path) -> str:
        """The organism's weights folder (projector + config): ``organism:vlm@<out_dir>``."""
        from vlmclf.organism.load import save_weights, vlm_config

        self.finish()
        projector = self.organism.projector
        save_weights(out_dir, "vlm", projector, vlm_config(projector))
        return f"organism:vlm@{out_dir}"


def make_trainable(
    model: Any, parts: TrainParts, lora: LoraSettings | None = None,
    trainable: Trainables = "projector",
) -> Trainable:  # fmt: skip
    """The trainable view of a loaded model, or a clear error for models that cannot be tuned."""
    if parts not in ("projector", "projector+lora"):
        raise ValueError(f"--train must be 'projector' or 'projector+lora', got {parts!r}")
    if trainable not in ("projector", "qformer"):
        raise ValueError(f"--trainable must be 'projector' or 'qformer', got {trainable!r}")
    embeds_prompt = callable(getattr(model, "embeddings_from_visual_tokens", None))
    if hasattr(model, "projector") and embeds_prompt:
        if trainable == "qformer":
            raise ValueError("--trainable qformer: organism:vlm has no Q-Former")
        return OrganismTrainable(model, parts)
    if callable(getattr(model, "build_inputs", None)) and hasattr(model, "model"):
        if getattr(model, "is_encoder_decoder", False):
            raise ValueError(f"{model.name}: fine-tuning needs a decoder-only language model")
        return HFTrainable(model, parts, lora, trainable)
    name = getattr(model, "name", type(model).__name__)
    raise ValueError(
        f"{name} cannot be fine-tuned here: use an open-weight VLM (hf:, random:, organism:vlm)"
    )
