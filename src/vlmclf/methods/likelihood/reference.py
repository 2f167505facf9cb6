"""The two slow ways of scoring class names, kept as references for tests and ``bench/scoring.py``.

* ``full_forward_log_probs``: lmms-eval's way, one complete forward per class, image included,
  through the model's ordinary forward (no cache, no custom mask): the ground truth.
* ``sequential_log_probs``: the paper's code, the prompt prefilled once, then one single-token
  forward per class token on a per-class copy of the prompt cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlmclf.methods.likelihood import compat
from vlmclf.methods.likelihood.scoring import Prefix, PrefixScorer
from vlmclf.methods.likelihood.targets import append_tokens
from vlmclf.methods.likelihood.trie import TokenSequence


@torch.no_grad()
def full_forward_log_probs(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], sequences: Sequence[TokenSequence]
) -> list[list[float]]:
    """Per-token log-probs of each sequence after the prompt of one example (batch of 1)."""
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError("full_forward_log_probs scores one example at a time")
    length = inputs["input_ids"].shape[1]
    out = []
    answer_type = compat.answer_token_type(model)
    for seq in sequences:
        extended = append_tokens(inputs, seq)
        if answer_type and "token_type_ids" in extended:  # the name is answer, not prefix
            extended["token_type_ids"] = extended["token_type_ids"].clone()
            extended["token_type_ids"][:, length:] = answer_type
        logits = model(**extended).logits[0, length - 1 : length - 1 + len(seq)].float()
        picked = torch.log_softmax(logits, -1)[torch.arange(len(seq)), torch.tensor(seq)]
        out.append(picked.tolist())
    return out


@torch.no_grad()
def full_forward_log_probs_from_embeds(
    decoder: torch.nn.Module, embeds: torch.Tensor, sequences: Sequence[TokenSequence]
) -> list[list[float]]:
    """The same for a prompt given as embeddings (1, P, D) to a causal LM."""
    length = embeds.shape[1]
    table = decoder.get_input_embeddings()
    out = []
    for seq in sequences:
        ids = torch.tensor([seq], device=embeds.device)
        full = torch.cat([embeds, table(ids).to(embeds.dtype)], dim=1)
        logits = decoder(inputs_embeds=full).logits[0, length - 1 : length - 1 + len(seq)].float()
        out.append(
            torch.log_softmax(logits, -1)[torch.arange(len(seq)), torch.tensor(seq)].tolist()
        )
    return out


@torch.no_grad()
def sequential_log_probs(
    scorer: PrefixScorer, prefix: Prefix, sequences: Sequence[TokenSequence]
) -> list[list[float]]:
    """The paper's loop for image 0 of ``prefix``: one single-token forward per class token.

    As in the paper's code, every token is fed, the last one included (its output is unused), so
    the pass count is the total number of class-name tokens.
    """
    if prefix.batch != 1:
        raise ValueError("sequential_log_probs scores one image at a time")
    decoder, device = scorer.decoder, scorer.device
    out = []
    for seq in sequences:
        log_probs = prefix.first_log_probs[0]
        values = []
        saved = compat.snapshot_cache(prefix.cache)
        try:
            for step, token in enumerate(seq):
                values.append(log_probs[token].item())
                kwargs: dict[str, object] = dict(
                    compat.inputs_after_cache(
                        prefix.last_token_inputs, 1, prefix.length + step, 1
                    )
                )
                if scorer.explicit_positions:
                    position = (
                        torch.tensor([[prefix.length + step]], device=device)
                        + prefix.offsets[:, None]
                    )
                    kwargs["position_ids"] = compat.text_position_ids(scorer.model, position)
                ids = torch.tensor([[token]], device=device)
                output = decoder(
                    input_ids=ids, past_key_values=prefix.cache, use_cache=True, **kwargs
                )
                log_probs = torch.log_softmax(output.logits[0, -1].float(), -1)
        finally:
            compat.restore_cache(prefix.cache, saved)
        out.append(values)
    return out
