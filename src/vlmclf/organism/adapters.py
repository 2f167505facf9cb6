"""LoRA adapters: how the grid's "LLM unfrozen" organism trains SmolLM2 on 2 CPU cores.

Unfreezing all 135M weights would cost a full AdamW state and ship a 540 MB copy; LoRA (Hu et
al. 2021) trains a rank-r update ``B @ A`` beside each attention query and value projection
instead, the placement of the LoRA paper, so the language model itself learns during the
projector's pretraining while the shipped file stays under a megabyte. At load time the update
is merged into a private copy of the weights (exact up to float rounding), so inference runs the
plain model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

LORA_TARGETS = ("q_proj", "v_proj")


class LoRALinear(nn.Module):
    """``base(x) + scale * x A^T B^T``; B starts at zero, so training starts at the base model."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale


def adapter_config(rank: int, alpha: float) -> dict[str, Any]:
    return {"type": "lora", "rank": rank, "alpha": alpha, "targets": list(LORA_TARGETS)}


def with_lora(lm: Any, rank: int, alpha: float) -> tuple[Any, list[nn.Parameter]]:
    """A private copy of ``lm`` with LoRA beside every target projection, and the new
    parameters (the only trainable ones)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    model = copy.deepcopy(lm).requires_grad_(False)
    params: list[nn.Parameter] = []
    for layer in model.model.layers:
        for target in LORA_TARGETS:
            wrapped = LoRALinear(getattr(layer.self_attn, target), rank, alpha)
            setattr(layer.self_attn, target, wrapped)
            params += [wrapped.A, wrapped.B]
    return model, params


def lora_state(lm: Any) -> dict[str, torch.Tensor]:
    """``{"layers.{i}.{target}.A|B": tensor}`` of a model built by ``with_lora``."""
    state = {}
    for i, layer in enumerate(lm.model.layers):
        for target in LORA_TARGETS:
            module = getattr(layer.self_attn, target)
            state[f"layers.{i}.{target}.A"] = module.A.detach()
            state[f"layers.{i}.{target}.B"] = module.B.detach()
    return state


def merged_copy(lm: Any, state: dict[str, torch.Tensor], config: dict[str, Any]) -> Any:
    """A private copy of ``lm`` (float32 math) with ``W += alpha/rank * B @ A`` merged in."""
    rank, alpha = int(config["rank"]), float(config["alpha"])
    targets = tuple(config.get("targets", LORA_TARGETS))
    expected = {f"layers.{i}.{t}.{m}" for i in range(len(lm.model.layers)) for t in targets
                for m in "AB"}  # fmt: skip
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"adapter tensors do not match the model (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")  # fmt: skip
    model = copy.deepcopy(lm)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for target in targets:
                linear = getattr(layer.self_attn, target)
                a = state[f"layers.{i}.{target}.A"].float()
                b = state[f"layers.{i}.{target}.B"].float()
                update = (b @ a) * (alpha / rank)
                linear.weight.copy_((linear.weight.float() + update).to(linear.weight.dtype))
    return model.eval().requires_grad_(False)
