"""Batched greedy decoding for the server: a shared prompt prefix, rows that leave when done.

The model's own ``generate`` answers a batch correctly but wastes work a server sees every time:

* the chat template's text before the image (the organism's system prompt, 24 of its 45
  prompt tokens) is the same in every request, yet every row of every batch prefills it again.
  Here its keys and values are computed once (per distinct prefix) and shared by all rows, so a
  batch's prefill runs only the image and question tokens;
* every row runs until the longest answer ends. Here a row leaves the batch at its own
  end-of-text or token budget (budgets may differ within a batch), and a row whose client went
  away leaves at the next step;
* nothing is seen until the whole batch ends. Here every step's tokens reach a callback, which
  streaming turns into chunks as they are decoded.

The forward is the model's own (its ``lm`` on ``inputs_embeds``, positions counted from each
row's first real token). Sums run in other orders than in ``model.generate`` (as they already
do between its batch sizes), so logits may differ in their last bits; the greedy answers are
compared with ``model.generate``'s, one request at a time, by the tests and bench/serve.py.
Logits are computed for the last position only, and for a Llama language model (the
organism's) the output layer is applied here to that position's hidden state as one 2-D
product: the model's own ``logits_to_keep=1`` slices a strided (B, 1, hidden) view, which
torch runs as a batched matmul against the expanded 49152 x 576 output matrix (98 ms for
8 rows against 44 ms, measured), and for several rows ``W @ h.T`` reads that matrix in its
stored order (17 ms for 8 rows against 26 ms for ``h @ W.T``). One row keeps ``F.linear``.

It needs the organism's prompt interface (``prompt_pieces``, ``visual_tokens``, ``project``,
``embed_ids``); other models keep using their ``generate``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import DynamicCache, LlamaForCausalLM

PREFIX_CACHE_ENTRIES = 8
_NEEDED = ("lm", "tokenizer", "prompt_pieces", "visual_tokens", "project", "embed_ids")


@dataclass
class GreedyRow:
    """One request: its image, question, token budget, and hooks into the server."""

    image: Image.Image
    question: str
    max_new_tokens: int
    on_token: Callable[[int], None] | None = None  # called with each new token id
    gone: Callable[[], bool] = lambda: False  # the client went away: stop this row


@dataclass
class Decoded:
    """What one row produced: its token ids (without the end-of-text token), why it stopped."""

    token_ids: list[int] = field(default_factory=list)
    stopped: bool = False  # True at end-of-text, False when the budget ran out
    cancelled: bool = False


class GreedyDecoder:
    """Greedy decoding of batches of rows on an organism-style model (see the module doc)."""

    def __init__(self, model: Any):
        if not self.supports(model):
            raise TypeError(f"{type(model).__name__} lacks the prompt interface {_NEEDED}")
        self.model = model
        self.lm = model.lm
        self.eos_id = int(model.tokenizer.eos_token_id)
        self.pad_id = int(getattr(model, "pad_token_id", self.eos_id))
        self._prefixes: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._last_logit_only = "logits_to_keep" in inspect.signature(self.lm.forward).parameters
        # Llama's forward is exactly decoder -> lm_head, so the head can be applied here
        self._head = (
            self.lm.get_output_embeddings() if isinstance(self.lm, LlamaForCausalLM) else None
        )

    @staticmethod
    def supports(model: Any) -> bool:
        return all(hasattr(model, name) for name in _NEEDED) and isinstance(
            getattr(model, "lm", None), torch.nn.Module
        )

    @torch.inference_mode()
    def decode(self, rows: Sequence[GreedyRow]) -> list[Decoded]:
        """Each row's greedy answer; rows with different prompt prefixes run as separate batches."""
        pieces = [self.model.prompt_pieces(row.question) for row in rows]
        results: list[Decoded] = [Decoded() for _ in rows]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (before, _after) in enumerate(pieces):
            groups.setdefault(tuple(before), []).append(index)
        for before, indices in groups.items():
            afters = [list(pieces[i][1]) for i in indices]
            decoded = self._decode_group(before, [rows[i] for i in indices], afters)
            for i, result in zip(indices, decoded, strict=True):
                results[i] = result
        return results

    # ----- one batch sharing a prefix ----------------------------------------------------

    def _decode_group(
        self, before: tuple[int, ...], rows: list[GreedyRow], afters: list[list[int]]
    ) -> list[Decoded]:
        results = [Decoded() for _ in rows]
        embeds, mask = self._suffix_embeddings(rows, afters, len(before))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self._cache_with_prefix(before, len(rows))
        logits = self._forward(embeds, mask, positions[:, len(before) :], cache)
        alive = list(range(len(rows)))  # batch position -> row index
        last_position = positions[:, -1:]
        while True:
            next_ids = logits.argmax(-1)
            keep = self._record(next_ids.tolist(), alive, rows, results)
            if not keep:
                return results
            if len(keep) < len(alive):
                selected = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(selected)
                mask, last_position, next_ids = (
                    mask[selected],
                    last_position[selected],
                    next_ids[selected],
                )
                alive = [alive[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            last_position = last_position + 1
            logits = self._forward(None, mask, last_position, cache, next_ids[:, None])

    def _record(
        self, next_ids: list[int], alive: list[int], rows: list[GreedyRow], results: list[Decoded]
    ) -> list[int]:
        """Store each live row's new token; the batch positions that go on to the next step."""
        keep = []
        for position, (row_index, token) in enumerate(zip(alive, next_ids, strict=True)):
            row, result = rows[row_index], results[row_index]
            if row.gone():
                result.cancelled = True
                continue
            if token == self.eos_id:
                result.stopped = True
                continue
            result.token_ids.append(token)
            if row.on_token is not None:
                row.on_token(token)
            if len(result.token_ids) < row.max_new_tokens:
                keep.append(position)
        return keep

    def _forward(
        self,
        embeds: torch.Tensor | None,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last position's logits, (B, vocab), with the cache extended in place."""
        inputs = {
            "inputs_embeds": embeds,
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": positions,
            "past_key_values": cache,
            "use_cache": True,
        }
        if self._head is None:
            extra = {"logits_to_keep": 1} if self._last_logit_only else {}
            return self.lm(**inputs, **extra).logits[:, -1]
        hidden = self.lm.get_decoder()(**inputs).last_hidden_state[:, -1].contiguous()
        if hidden.shape[0] == 1:
            return F.linear(hidden, self._head.weight, self._head.bias)
        logits = (self._head.weight @ hidden.t()).t()
        return logits if self._head.bias is None else logits + self._head.bias

    def _suffix_embeddings(
        self, rows: list[GreedyRow], afters: list[list[int]], prefix_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual tokens + question embeddings, left-padded to one length after the prefix.

        The mask covers prefix and suffix: padding sits between the shared prefix and each
        row's own tokens, where the mask hides it and the positions skip it."""
        projected = self.model.project(self.model.visual_tokens([row.image for row in rows]))
        suffixes = [
            torch.cat([visual, self.model.embed_ids(after)])
            for visual, after in zip(projected, afters, strict=True)
        ]
        length = max(suffix.shape[0] for suffix in suffixes)
        pad = self.model.embed_ids([self.pad_id])
        embeds = torch.stack(
            [torch.cat([pad.expand(length - s.shape[0], -1), s]) for s in suffixes]
        )
        mask = torch.zeros(
            len(rows), prefix_length + length, dtype=torch.long, device=embeds.device
        )
        mask[:, :prefix_length] = 1
        for index, suffix in enumerate(suffixes):
            mask[index, prefix_length + length - suffix.shape[0] :] = 1
        return embeds, mask

    def _cache_with_prefix(self, before: tuple[int, ...], batch: int) -> Any:
        """A fresh cache holding the shared prefix's keys and values for ``batch`` rows."""
        cache = DynamicCache(config=self.lm.config)
        for layer, (keys, values) in enumerate(self._prefix_states(before)):
            cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), layer)
        return cache

    def _prefix_states(self, before: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values) of the prefix, computed once per distinct prefix."""
        if before not in self._prefixes:
            if len(self._prefixes) >= PREFIX_CACHE_ENTRIES:
                self._prefixes.pop(next(iter(self._prefixes)))
            states: list[tuple[torch.Tensor, torch.Tensor]] = []
            if before:
                cache = DynamicCache(config=self.lm.config)
                embeds = self.model.embed_ids(list(before))[None]
                mask = torch.ones(1, len(before), dtype=torch.long, device=embeds.device)
                self._forward(embeds, mask, mask.cumsum(-1) - 1, cache)
                states = [(layer.keys, layer.values) for layer in cache.layers]
            self._prefixes[before] = states
        return self._prefixes[before]
