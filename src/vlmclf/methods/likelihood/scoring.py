"""Score many token sequences after one shared prompt: prefill once, each distinct prefix once.

``PrefixScorer`` works on any decoder-only causal LM behind a VLM (LLaVA, LLaVA-NeXT, BLIP-2 and
InstructBLIP's OPT or Llama, Qwen2-VL) or a bare LM fed with prompt embeddings (the organism).

Two strategies, chosen per model (``strategy="auto"``):

* ``tree``: the class-name trie goes after the cached prompt in one packed sequence with a tree
  attention mask and explicit positions (``trie.py``); one pass scores every distinct prefix.
* ``replicate``: for decoders that cannot take a custom 4D mask or explicit positions (e.g. an
  OPT that derives positions from the 2D mask, FlashAttention): the prompt cache is repeated over
  a chunk of names and the chunk runs as a right-padded batch. Exact as well, just more work.

Both split the work into passes of at most ``max_pass_tokens`` query tokens (images x nodes).

Decoders with sliding-window layers (Gemma 3, Mistral) ignore their window under a custom 4D
mask, so the tree runs only where the window covers every scored token's whole context
(prompt + name); elsewhere that prompt is scored by replication, where the model builds its own
sliding masks. Attention that is not causal over the prompt (Gemma 3's and PaliGemma's image
tokens) lives in the prefill, which is the model's own forward, so neither strategy alters it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from vlmclf.methods.likelihood import compat
from vlmclf.methods.likelihood.trie import (
    TokenSequence,
    TokenTrie,
    cached_trie,
    chunk_sequences,
    node_log_probs,
)

Strategy = Literal["auto", "tree", "replicate"]
DEFAULT_PASS_TOKENS = {"cuda": 8192, "cpu": 512}  # measured: small passes win on CPU
MASK_CACHE_SIZE = 16
"""Tree masks kept per scorer, one per (chunk of names, prompt length): a run's images share
them (building each anew took ~9% of CPU scoring time per image)."""


@dataclass
class Prefix:
    """A prefilled prompt for B images: its cache and what comes next.

    ``offsets[b]`` turns a sequence index into a position (non-zero only for Qwen2-VL, whose
    image tokens use fewer text positions than sequence slots).
    """

    cache: object
    length: int
    first_log_probs: torch.Tensor  # (B, V) float32: log-softmax after the last prompt token
    offsets: torch.Tensor  # (B,) long
    last_token_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-token inputs that scored tokens repeat from the last prompt token (Mllama's
    ``cross_attention_mask``, (B, 1, images, tiles))."""

    @property
    def batch(self) -> int:
        return int(self.first_log_probs.shape[0])


class PrefixScorer:
    """Per-token log-probs of token sequences after a shared, cached prompt."""

    def __init__(
        self, model: nn.Module, strategy: Strategy = "auto", max_pass_tokens: int | None = None
    ):
        self.model = model
        self.decoder = compat.text_decoder(model)
        embeddings = self.decoder.get_input_embeddings().weight
        self.device, self.dtype = embeddings.device, embeddings.dtype  # inputs go where it is
        self.max_pass_tokens = max_pass_tokens or DEFAULT_PASS_TOKENS.get(self.device.type, 4096)
        self.explicit_positions = compat.accepts(self.decoder, "position_ids")
        tree_ok = self.explicit_positions and compat.takes_custom_4d_mask(self.decoder)
        if strategy == "tree" and not tree_ok:
            raise ValueError(
                f"{compat.model_type(model)}: the tree strategy needs explicit position_ids and an "
                "attention implementation that takes a 4D mask (eager or sdpa); use 'replicate'"
            )
        self.strategy: Strategy = (
            ("tree" if tree_ok else "replicate") if strategy == "auto" else strategy
        )
        self.sliding_window = compat.sliding_window(self.decoder)
        self._masks: OrderedDict[tuple[object, int], torch.Tensor] = OrderedDict()

    # ---------------------------------------------------------------- prefill

    @torch.no_grad()
    def prefill(self, inputs: dict[str, torch.Tensor]) -> Prefix:
        """Run the full multimodal model on processor outputs (unpadded, equal-length rows)."""
        _require_unpadded(inputs.get("attention_mask"))
        kwargs = compat.logits_kwargs(self.model, 1)
        output = self.model(**inputs, use_cache=True, **kwargs)
        batch, length = inputs["input_ids"].shape
        offsets = (
            compat.mrope_delta(self.model, batch, self.device)
            if compat.uses_mrope(self.model)
            else torch.zeros(batch, dtype=torch.long, device=self.device)
        )
        prefix = self._prefix(output, length, offsets + compat.first_position(self.model))
        prefix.last_token_inputs = compat.last_token_inputs(inputs)
        return prefix

    @torch.no_grad()
    def prefill_text(self, input_ids: torch.Tensor) -> Prefix:
        """Run the language model alone on token ids (the image-free prompt of guidance)."""
        batch, length = input_ids.shape
        first = compat.first_position(self.model)
        kwargs: dict[str, object] = {}
        if self.explicit_positions:
            positions = torch.arange(length, device=self.device).expand(batch, -1) + first
            kwargs["position_ids"] = compat.text_position_ids(self.model, positions)
        kwargs.update(compat.logits_kwargs(self.decoder, 1))
        output = self.decoder(input_ids=input_ids.to(self.device), use_cache=True, **kwargs)
        return self._prefix(
            output, length, torch.full((batch,), first, dtype=torch.long, device=self.device)
        )

    @torch.no_grad()
    def prefill_embeds(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> Prefix:
        """Run the language model on prompt embeddings (models that build the prefix themselves)."""
        _require_unpadded(attention_mask)
        batch, length = embeds.shape[:2]
        kwargs: dict[str, object] = dict(compat.logits_kwargs(self.decoder, 1))
        if self.explicit_positions:
            kwargs["position_ids"] = torch.arange(length, device=self.device).expand(batch, -1)
        output = self.decoder(
            inputs_embeds=embeds.to(self.device, self.dtype), use_cache=True, **kwargs
        )
        return self._prefix(
            output, length, torch.zeros(batch, dtype=torch.long, device=self.device)
        )

    def _prefix(self, output: object, length: int, offsets: torch.Tensor) -> Prefix:
        cache = compat.past_key_values_of(output)
        last = output.logits[:, -1, :].float()
        return Prefix(cache, length, torch.log_softmax(last, dim=-1), offsets)

    # ---------------------------------------------------------------- scoring

    def images_per_pass(self, sequences: Sequence[TokenSequence]) -> int:
        """How many images one pass can score together within the token budget (the tree
        strategy; replication already multiplies each image's cache by the chunk's rows)."""
        if self.strategy == "replicate" or not sequences:
            return 1
        chunks = chunk_sequences(sequences, self.max_pass_tokens)
        largest = max(cached_trie(tuple(sequences[i] for i in g)).num_nodes for g in chunks)
        return max(1, self.max_pass_tokens // largest)

    @torch.no_grad()
    def score(self, prefix: Prefix, sequences: Sequence[TokenSequence]) -> list[list[list[float]]]:
        """``result[b][s]``: log-prob of each token of sequence ``s`` after image ``b``'s prompt."""
        if not sequences:
            return [[] for _ in range(prefix.batch)]
        result: list[list[list[float] | None]] = [
            [None] * len(sequences) for _ in range(prefix.batch)
        ]
        strategy = self.strategy_for(prefix, sequences)
        for group in self._chunks(sequences, prefix, strategy):
            chunk = [tuple(sequences[i]) for i in group]
            per_token = (
                self._score_tree(prefix, chunk)
                if strategy == "tree"
                else self._score_replicated(prefix, chunk)
            )
            for b in range(prefix.batch):
                for i, values in zip(group, per_token[b], strict=True):
                    result[b][i] = values
        return result  # type: ignore[return-value]

    def strategy_for(self, prefix: Prefix, sequences: Sequence[TokenSequence]) -> Strategy:
        """The tree, unless a sliding window is shorter than the prompt plus the longest name
        (the tree mask would let a token see past its window): then replication, which is exact."""
        if self.strategy != "tree" or self.sliding_window is None or not sequences:
            return self.strategy
        longest = max(len(s) for s in sequences)
        # the window's cache keeps window - 1 past tokens; the newest query sees those and itself
        return "tree" if prefix.length + longest < self.sliding_window else "replicate"

    def _chunks(
        self, sequences: Sequence[TokenSequence], prefix: Prefix, strategy: Strategy
    ) -> list[list[int]]:
        """Tree: tries of at most ``max_pass_tokens`` nodes. Replicate: as many rows as fit when
        each row holds a copy of the prompt as well as its name (the cache copy dominates)."""
        if strategy == "tree":
            return chunk_sequences(sequences, self.max_pass_tokens)
        longest = max(len(s) for s in sequences)
        rows = max(1, self.max_pass_tokens // (prefix.batch * (prefix.length + longest)))
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        return [order[start : start + rows] for start in range(0, len(order), rows)]

    def _score_tree(self, prefix: Prefix, chunk: list[TokenSequence]) -> list[list[list[float]]]:
        key = tuple(chunk)
        trie = cached_trie(key)
        kept = trie.nodes_with_children()
        logits = None
        if kept:  # names of one token need nothing beyond the prefill
            batch, length = prefix.batch, prefix.length
            ids = torch.tensor(trie.tokens, device=self.device).expand(batch, -1)
            positions = trie.positions(length, self.device)[None, :] + prefix.offsets[:, None]
            mask = self._tree_mask(trie, key, length).expand(batch, -1, -1, -1)
            keep = torch.tensor(kept, device=self.device)
            logits = self._extend(prefix, ids, positions, mask, keep)
        rows = node_log_probs(trie, prefix.first_log_probs, logits, kept).cpu().tolist()
        return [[[row[n] for n in path] for path in trie.paths] for row in rows]

    def _tree_mask(self, trie: TokenTrie, key: object, length: int) -> torch.Tensor:
        """The chunk's tree mask after a prompt of ``length``: the same for every image, so it
        is built once and kept (the model only reads it)."""
        mask = self._masks.get((key, length))
        if mask is None:
            mask = trie.attention_mask(length, self.dtype, self.device)
            self._masks[(key, length)] = mask
            if len(self._masks) > MASK_CACHE_SIZE:
                self._masks.popitem(last=False)
        else:
            self._masks.move_to_end((key, length))
        return mask

    def _score_replicated(
        self, prefix: Prefix, chunk: list[TokenSequence]
    ) -> list[list[list[float]]]:
        rows, longest, batch = len(chunk), max(len(s) for s in chunk), prefix.batch
        firsts = [[prefix.first_log_probs[b, s[0]].item()] for b in range(batch) for s in chunk]
        if longest == 1:
            return [[firsts[b * rows + r] for r in range(rows)] for b in range(batch)]
        ids = torch.zeros(rows, longest, dtype=torch.long)
        real = torch.zeros(rows, longest, dtype=torch.long)
        for r, seq in enumerate(chunk):
            ids[r, : len(seq)] = torch.tensor(seq)
            real[r, : len(seq)] = 1
        ids, real = ids.repeat(batch, 1).to(self.device), real.repeat(batch, 1).to(self.device)
        mask = torch.cat(
            [torch.ones(batch * rows, prefix.length, dtype=torch.long, device=self.device), real], 1
        )
        offsets = prefix.offsets.repeat_interleave(rows)
        positions = (
            torch.arange(longest, device=self.device)[None, :] + prefix.length + offsets[:, None]
        )
        keep = torch.arange(longest - 1, device=self.device)
        replicated = Prefix(
            compat.replicate_cache(prefix.cache, rows),
            prefix.length,
            prefix.first_log_probs,
            offsets,
            prefix.last_token_inputs,
        )
        logits = self._extend(replicated, ids, positions, mask, keep).float()
        picked = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1).cpu()
        out = [
            [
                firsts[b * rows + r] + picked[b * rows + r, : len(seq) - 1].tolist()
                for r, seq in enumerate(chunk)
            ]
            for b in range(batch)
        ]
        return out

    def _extend(
        self,
        prefix: Prefix,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        keep: torch.Tensor,
    ) -> torch.Tensor:
        """Logits at ``keep`` for tokens placed after the cached prompt; the cache is restored."""
        kwargs: dict[str, object] = {"attention_mask": mask}
        kwargs.update(
            compat.inputs_after_cache(
                prefix.last_token_inputs, ids.shape[0], prefix.length, ids.shape[1]
            )
        )
        if self.explicit_positions:
            kwargs["position_ids"] = compat.text_position_ids(self.model, positions)
        kwargs.update(compat.logits_kwargs(self.decoder, keep))
        saved = compat.snapshot_cache(prefix.cache)
        try:
            output = self.decoder(
                input_ids=ids, past_key_values=prefix.cache, use_cache=True, **kwargs
            )
        finally:
            compat.restore_cache(prefix.cache, saved)
        logits = output.logits
        return logits if logits.shape[1] == keep.numel() else logits[:, keep]


def _require_unpadded(attention_mask: torch.Tensor | None) -> None:
    if (
        attention_mask is not None
        and attention_mask.dim() == 2
        and not bool(attention_mask.bool().all())
    ):
        raise ValueError("prefill: padded prompts are not supported; group prompts of equal length")
