"""Natural-language-inference models for mapping free-form answers to labels.

``load_nli("hf:<path or id>")`` loads any sequence-classification NLI checkpoint (the thesis used
``facebook/bart-large-mnli``) and finds its entailment class in ``config.label2id``;
``load_nli("random:bart_nli")`` builds a tiny randomly initialised BartForSequenceClassification
with three labels and an offline tokenizer framed like BART's (``<s> premise </s></s> hypothesis
</s>``), so tests exercise the real code path without a download.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

NLI_LABELS = {"contradiction": 0, "neutral": 1, "entailment": 2}
RANDOM_NLI_CONTEXT = 512


@dataclass
class NLIModel:
    """A premise/hypothesis classifier and the index of its entailment class."""

    name: str
    model: Any
    tokenizer: Any
    entailment_id: int
    max_length: int
    device: torch.device

    @torch.no_grad()
    def entailment_probs(
        self, premises: Sequence[str], hypotheses: Sequence[str], batch_size: int = 64
    ) -> list[float]:
        """P(entailment) for each (premise, hypothesis) pair: softmax over the model's labels."""
        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
        out: list[float] = []
        for start in range(0, len(premises), batch_size):
            batch = self.tokenizer(
                list(premises[start : start + batch_size]),
                list(hypotheses[start : start + batch_size]),
                padding=True, truncation="only_first", max_length=self.max_length,
                return_tensors="pt",
            )  # fmt: skip
            batch = {k: v.to(self.device) for k, v in batch.items() if k != "token_type_ids"}
            logits = self.model(**batch).logits.float()
            out.extend(torch.softmax(logits, dim=-1)[:, self.entailment_id].cpu().tolist())
        return out

    @torch.no_grad()
    def pair_logits(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[Any]:
        """The model's float32 logits (a numpy row) for each pair, each pair run alone and
        unpadded and tokenized as transformers' zero-shot pipeline does (truncating the premise
        to the tokenizer's own limit)."""
        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
        names = self.tokenizer.model_input_names
        out = []
        for premise, hypothesis in zip(premises, hypotheses, strict=True):
            batch = self._pipeline_tokens(premise, hypothesis)
            inputs = {k: v.to(self.device) for k, v in batch.items() if k in names}
            if "use_cache" in inspect.signature(self.model.forward).parameters:
                inputs["use_cache"] = False
            out.append(self.model(**inputs).logits.float().cpu().numpy()[0])
        return out

    def _pipeline_tokens(self, premise: str, hypothesis: str) -> Any:
        try:
            return self.tokenizer(
                [[premise, hypothesis]], padding=True, truncation="only_first", return_tensors="pt"
            )
        except Exception as err:  # the pipeline's own fallback, for slow tokenizers
            if "too short" not in str(err):
                raise
            return self.tokenizer([[premise, hypothesis]], padding=True, return_tensors="pt")


def load_nli(spec: str, device: str = "cpu", seed: int = 0) -> NLIModel:
    """An NLI model from ``hf:<checkpoint>`` or ``random:bart_nli``."""
    prefix, _, name = spec.partition(":")
    if prefix == "random" and name == "bart_nli":
        return _random_bart_nli(device, seed)
    if prefix == "hf" and name:
        return _hf_nli(name, device)
    raise ValueError(f"NLI model spec {spec!r}: use hf:<checkpoint path or id> or random:bart_nli")


def entailment_index(label2id: dict[str, int], where: str) -> int:
    """The id of the label whose name starts with "entail" (any case)."""
    found = [i for label, i in label2id.items() if str(label).lower().startswith("entail")]
    if len(found) != 1:
        raise ValueError(
            f"{where}: config.label2id {label2id} has no single entailment label; "
            "is it an NLI checkpoint?"
        )
    return int(found[0])


def _hf_nli(name: str, device: str) -> NLIModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForSequenceClassification.from_pretrained(name)
    except OSError as err:
        raise ValueError(f"hf:{name}: cannot load an NLI checkpoint ({err})") from err
    model.eval().to(device)
    entailment = entailment_index(dict(model.config.label2id), f"hf:{name}")
    limit = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 1024)
    return NLIModel(f"hf:{name}", model, tokenizer, entailment, limit, torch.device(device))


def _random_bart_nli(device: str, seed: int) -> NLIModel:
    from transformers import BartConfig, BartForSequenceClassification

    tokenizer = bart_tokenizer()
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=RANDOM_NLI_CONTEXT, num_labels=3,
        id2label={i: label for label, i in NLI_LABELS.items()}, label2id=dict(NLI_LABELS),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BartForSequenceClassification(config)
    model.eval().to(device)
    return NLIModel(
        "random:bart_nli", model, tokenizer, NLI_LABELS["entailment"], RANDOM_NLI_CONTEXT,
        torch.device(device),
    )


def bart_tokenizer() -> Any:
    """The shared offline BPE with BART's framing of single texts and pairs."""
    from tokenizers import processors

    from vlmclf.models.random_tokenizer import build_tokenizer

    tokenizer = build_tokenizer("opt")
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = RANDOM_NLI_CONTEXT
    backend = tokenizer.backend_tokenizer
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B:1 {eos}",
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )
    return tokenizer
