"""The fine-tune's options under a protocol: the protocol's values, then every explicit option.

``data/protocols/<name>.json`` holds the fine-tuning settings of each protocol, per family where
they differ: the paper's LLaVA run trains and evaluates on LLaVA's ``vicuna_v1`` conversation
(system prompt, ``USER: <image>\\n{question} ASSISTANT: {label}</s>``), asks "What type of object
is in the photo?", and scores greedy answers of up to 1024 new tokens by exact match.
"""

from __future__ import annotations

from typing import Any

from vlmclf.paper.protocols import load_protocol, model_family, resolve

FINETUNE_OPTIONS = (
    "epochs", "lr_projector", "batch_size", "schedule", "warmup_ratio", "weight_decay",
    "lora_rank", "lora_alpha", "lora_targets", "match",
)  # fmt: skip
"""Command-line options a protocol sets where the user did not type them."""
PROMPT_SETTINGS = ("question", "prompt_template", "eval_max_new_tokens")
"""Settings with no option of their own: what the model is asked, in training and evaluation."""


def resolve_finetune_options(
    protocol: str, model: str, given: dict[str, Any], explicit: set[str]
) -> dict[str, Any]:
    """``given`` (the parsed options, defaults included) with the protocol's values put in
    wherever the user did not type the option (``explicit``), plus ``PROMPT_SETTINGS`` (None
    where the protocol sets nothing)."""
    rows = load_protocol(protocol)["experiments"].get("finetune", {}).get("families")
    family = model_family(model) if rows else None  # reading an hf: config costs a lookup
    settings = resolve(protocol, "finetune", family)
    chosen = dict(given)
    for name in FINETUNE_OPTIONS:
        if name in given and name not in explicit and settings.get(name) is not None:
            chosen[name] = settings[name]
    chosen.update({name: settings.get(name) for name in PROMPT_SETTINGS})
    return chosen
