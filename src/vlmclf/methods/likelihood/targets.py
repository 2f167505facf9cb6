"""What the likelihood method needs from a model, for each kind of model it supports.

A *target* turns (images, question) into prefilled prompts, gives the image-free prompt for
guidance, and says which text precedes a class name (so names are tokenized as the model would
emit them). Two kinds: transformers VLM wrappers (``HFVisionLanguageModel``: processor outputs)
and models that build their prompt as embeddings (the organism: ``prompt_embeddings``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from vlmclf.methods.likelihood import compat
from vlmclf.methods.likelihood.scoring import Prefix, PrefixScorer, Strategy
from vlmclf.methods.likelihood.trie import TokenSequence

# Config fields naming tokens that stand for the image; the image-free prompt drops them.
_IMAGE_TOKEN_FIELDS = (
    "image_token_id", "image_token_index", "video_token_id", "vision_start_token_id",
    "vision_end_token_id",
)  # fmt: skip


class ScoringTarget(Protocol):
    tokenizer: Any
    scorer: PrefixScorer

    def context_text(self, question: str) -> str: ...

    def image_prefixes(
        self, images: Sequence[Image.Image], question: str, answer: TokenSequence, trim: int = 0
    ) -> Iterator[tuple[list[int], Prefix]]: ...

    def text_prefix(self, question: str, answer: TokenSequence, trim: int = 0) -> Prefix: ...


def make_target(
    model: Any, strategy: Strategy = "auto", max_pass_tokens: int | None = None
) -> ScoringTarget:
    """The target for a loaded model, or a clear error for models that cannot be scored."""
    if callable(getattr(model, "prompt_embeddings", None)) and hasattr(model, "lm"):
        return EmbeddingTarget(model, strategy, max_pass_tokens)
    if callable(getattr(model, "build_inputs", None)) and hasattr(model, "model"):
        if getattr(model, "is_encoder_decoder", False):
            raise ValueError(
                f"{model.name}: likelihood scoring needs a decoder-only language model"
            )
        return HFTarget(model, strategy, max_pass_tokens)
    name = getattr(model, "name", type(model).__name__)
    raise ValueError(
        f"--method likelihood needs an open-weight VLM (hf:, random:, organism:); "
        f"{name} exposes no logits"
    )


@dataclass(frozen=True)
class ScoringContext:
    """The text class names follow, split at the boundary lm-evaluation-harness uses.

    ``text`` is the whole context (prompt, then the answer prefix) with its trailing whitespace
    removed: that is what gets prefilled. ``delimiter`` starts every continuation: the removed
    whitespace, or one space where there was none. The model's own formatted prompt is turned
    into ``text`` by dropping its last ``trim`` tokens and appending ``answer``.
    """

    text: str
    text_ids: TokenSequence
    delimiter: str
    trim: int
    answer: TokenSequence


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def scoring_context(
    tokenizer: Any, prompt: str, answer_prefix: str | None = None
) -> ScoringContext:
    """Where names are scored after ``prompt`` (the model's formatted prompt) + ``answer_prefix``.

    lm-evaluation-harness's rule: trailing whitespace of the context moves into the
    continuation before tokenizing, so ``"... a "`` + ``"Dress"`` scores ``" Dress"`` (one
    token) after ``"... a"`` instead of ``"D", "ress"`` after a lone space token.
    """
    full = prompt
    if answer_prefix:
        full = prompt + ("" if not prompt or prompt[-1].isspace() else " ") + answer_prefix
    text = full.rstrip()
    if not text:
        raise ValueError("likelihood: the prompt before the class names is empty")
    prompt_ids, text_ids = _ids(tokenizer, prompt), _ids(tokenizer, text)
    common = 0
    for a, b in zip(prompt_ids, text_ids, strict=False):
        if a != b:
            break
        common += 1
    return ScoringContext(
        text=text, text_ids=tuple(text_ids), delimiter=full[len(text) :] or " ",
        trim=len(prompt_ids) - common, answer=tuple(text_ids[common:]),
    )  # fmt: skip


def name_continuations(
    tokenizer: Any, context: ScoringContext, names: Sequence[str]
) -> dict[str, TokenSequence]:
    """Each name's tokens after ``context``: ``text + delimiter + name`` tokenized as one text,
    split at the length of ``text``'s tokens (lm-evaluation-harness's ``_encode_pair``)."""
    unique = list(dict.fromkeys(names))
    joint = tokenizer(
        [context.text + context.delimiter + name for name in unique], add_special_tokens=False
    )["input_ids"]
    out: dict[str, TokenSequence] = {}
    for name, ids in zip(unique, joint, strict=True):
        out[name] = tuple(ids[len(context.text_ids) :])
        if not out[name]:
            raise ValueError(f"class name {name!r} tokenizes to nothing")
    return out


def continuation_tokens(
    tokenizer: Any, context: str, names: Sequence[str]
) -> dict[str, TokenSequence]:
    """Each name's tokens as the model would emit them after the fixed prompt ``context``.

    For callers whose prompt is prefilled as it is (fine-tuning targets, ImageWikiQA letters);
    the likelihood method moves trailing whitespace instead (``scoring_context``). The name
    gets a leading space unless the context ends in whitespace; context + name is tokenized as
    one text and split at the context's token count. Where a merge crosses the boundary (the
    context's tokens are not a prefix of the joint tokens) the name is tokenized on its own.
    """
    joiner = "" if not context or context[-1].isspace() else " "
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    unique = list(dict.fromkeys(names))
    joint = tokenizer([context + joiner + name for name in unique], add_special_tokens=False)[
        "input_ids"
    ]
    out: dict[str, TokenSequence] = {}
    for name, ids in zip(unique, joint, strict=True):
        if ids[: len(context_ids)] == context_ids and len(ids) > len(context_ids):
            out[name] = tuple(ids[len(context_ids) :])
        else:
            out[name] = tuple(tokenizer(joiner + name, add_special_tokens=False)["input_ids"])
        if not out[name]:
            raise ValueError(f"class name {name!r} tokenizes to nothing")
    return out


def _chat_context(tokenizer: Any, question: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return question


class HFTarget:
    """A transformers VLM wrapper: processor outputs in, the model's own forward for the prefill."""

    def __init__(self, wrapper: Any, strategy: Strategy, max_pass_tokens: int | None):
        self.wrapper = wrapper
        self.tokenizer = wrapper.tokenizer
        self.scorer = PrefixScorer(wrapper.model, strategy, max_pass_tokens)
        config = wrapper.model.config
        self.image_token_ids = {
            int(v) for f in _IMAGE_TOKEN_FIELDS if isinstance(v := getattr(config, f, None), int)
        }

    def context_text(self, question: str) -> str:
        return self.wrapper.format_prompt(question)

    def image_prefixes(
        self, images: Sequence[Image.Image], question: str, answer: TokenSequence, trim: int = 0
    ) -> Iterator[tuple[list[int], Prefix]]:
        """Prefilled prompts (last ``trim`` tokens dropped, ``answer`` appended), one batch per
        group of images whose prompts have equal length (LLaVA-NeXT and Qwen2-VL give images
        of different sizes different token counts)."""
        inputs = dict(self.wrapper.build_inputs(list(images), [question] * len(images)))
        mask = inputs["attention_mask"]
        if bool(mask.bool().all()):
            inputs = self._trimmed(inputs, question, trim)
            yield list(range(len(images))), self.scorer.prefill(append_tokens(inputs, answer))
            return
        groups: dict[int, list[int]] = {}
        for i, length in enumerate(mask.sum(dim=1).tolist()):
            groups.setdefault(int(length), []).append(i)
        for rows in groups.values():
            inputs = dict(
                self.wrapper.build_inputs([images[i] for i in rows], [question] * len(rows))
            )
            inputs = self._trimmed(inputs, question, trim)
            yield rows, self.scorer.prefill(append_tokens(inputs, answer))

    def text_prefix(self, question: str, answer: TokenSequence, trim: int = 0) -> Prefix:
        """The same prompt with every image token removed, run through the language model only."""
        probe = Image.new("RGB", (64, 64), (128, 128, 128))
        inputs = self._trimmed(dict(self.wrapper.build_inputs([probe], [question])), question, trim)
        ids = inputs["input_ids"][0].tolist()
        text_ids = [t for t in ids if t not in self.image_token_ids] + list(answer)
        return self.scorer.prefill_text(torch.tensor([text_ids], device=self.scorer.device))

    def _trimmed(self, inputs: dict[str, Any], question: str, trim: int) -> dict[str, Any]:
        """Processor outputs without the prompt's last ``trim`` tokens, once they are checked to
        be the formatted prompt's own last tokens (not image tokens or padding)."""
        if not trim:
            return inputs
        expected = _ids(self.tokenizer, self.context_text(question))[-trim:]
        tails = inputs["input_ids"][:, -trim:].tolist()
        if any(tail != expected for tail in tails):
            raise ValueError(
                f"{self.wrapper.name}: the processor's prompt does not end with the tokens of "
                "format_prompt(); cannot move its trailing whitespace into the class names"
            )
        return trim_tokens(inputs, trim)


class EmbeddingTarget:
    """A model that hands over its prompt as embeddings to a causal LM (``.lm``): the organism."""

    def __init__(self, model: Any, strategy: Strategy, max_pass_tokens: int | None):
        self.model = model
        self.tokenizer = model.tokenizer
        self.scorer = PrefixScorer(model.lm, strategy, max_pass_tokens)

    def context_text(self, question: str) -> str:
        formatter = getattr(self.model, "format_prompt", None)
        return (
            formatter(question) if callable(formatter) else _chat_context(self.tokenizer, question)
        )

    def image_prefixes(
        self, images: Sequence[Image.Image], question: str, answer: TokenSequence, trim: int = 0
    ) -> Iterator[tuple[list[int], Prefix]]:
        embeds, mask = self.model.prompt_embeddings(list(images), [question] * len(images))
        for rows, group in _unpadded_groups(embeds, mask):
            yield rows, self.scorer.prefill_embeds(self._append(_drop_last(group, trim), answer))

    def text_prefix(self, question: str, answer: TokenSequence, trim: int = 0) -> Prefix:
        embeds, mask = self.model.text_prompt_embeddings([question])
        ((_, group),) = _unpadded_groups(embeds, mask)
        return self.scorer.prefill_embeds(self._append(_drop_last(group, trim), answer))

    def _append(self, embeds: torch.Tensor, answer: TokenSequence) -> torch.Tensor:
        if not answer:
            return embeds
        table = self.scorer.decoder.get_input_embeddings()
        ids = torch.tensor([list(answer)], device=table.weight.device)
        extra = table(ids).to(embeds.device, embeds.dtype).expand(embeds.shape[0], -1, -1)
        return torch.cat([embeds, extra], dim=1)


def _drop_last(embeds: torch.Tensor, count: int) -> torch.Tensor:
    """Unpadded prompt embeddings (B, T, D) without their last ``count`` positions (the text
    prompt ends every row, so these are its last tokens)."""
    return embeds[:, : embeds.shape[1] - count] if count else embeds


def _unpadded_groups(
    embeds: torch.Tensor, mask: torch.Tensor | None
) -> list[tuple[list[int], torch.Tensor]]:
    """Rows regrouped by real length, padding removed (prefills must not be padded)."""
    if mask is None or bool(mask.bool().all()):
        return [(list(range(embeds.shape[0])), embeds)]
    groups: dict[int, list[int]] = {}
    for i, length in enumerate(mask.sum(dim=1).tolist()):
        groups.setdefault(int(length), []).append(i)
    out = []
    for rows in groups.values():
        out.append((rows, torch.stack([embeds[i][mask[i].bool()] for i in rows])))
    return out


_ZERO_EXTENDED_KEYS = ("mm_token_type_ids", "token_type_ids")
_PER_TOKEN_KEYS = ("input_ids", "attention_mask", *_ZERO_EXTENDED_KEYS,
                   *compat.LAST_TOKEN_REPEATED_INPUTS)  # fmt: skip


def trim_tokens(inputs: dict[str, Any], count: int) -> dict[str, Any]:
    """Unpadded processor outputs without the last ``count`` tokens of every row."""
    if not count:
        return inputs
    ids = inputs["input_ids"]
    out = dict(inputs)
    for key in _PER_TOKEN_KEYS:
        if key in inputs and inputs[key].shape[:2] == ids.shape:
            out[key] = inputs[key][:, : ids.shape[1] - count]
    return out


def append_tokens(inputs: dict[str, Any], tokens: TokenSequence) -> dict[str, Any]:
    """Processor outputs with ``tokens`` appended as plain text after the prompt of every row."""
    if not tokens:
        return inputs
    ids = inputs["input_ids"]
    tail = torch.tensor([list(tokens)], dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1)
    out = dict(inputs)
    out["input_ids"] = torch.cat([ids, tail], dim=1)
    if "attention_mask" in inputs:
        out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(tail)], dim=1)
    for key in _ZERO_EXTENDED_KEYS:
        if key in inputs and inputs[key].shape == ids.shape:
            out[key] = torch.cat(
                [inputs[key], torch.zeros_like(tail, dtype=inputs[key].dtype)], dim=1
            )
    repeated = compat.last_token_inputs(inputs)
    for key, value in compat.repeat_last_token_inputs(repeated, ids.shape[0], len(tokens)).items():
        out[key] = torch.cat([inputs[key], value], dim=1)
    return out
