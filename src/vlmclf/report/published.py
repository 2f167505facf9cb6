"""The numbers the paper and the thesis print, and which of them a result of ours stands beside.

``data/protocols/published.json`` is a copy of the project's reference file (every cell of the
paper's Tables 1-4 and 7-10 with its models' ids, the thesis's 20/100/1000-way rows, the headline
claims); ``null`` there is the paper's own N/A. A model spec is matched to a paper model by the
ids the file gives for it (``hf:llava-hf/llava-1.5-7b-hf``, a local folder of that name, an API
model id) or by the aliases below; a cell without a published number says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import PurePath
from typing import Any

RESOURCE = "data/protocols/published.json"
SPEC_PREFIXES = ("hf:", "openai:", "anthropic:", "gemini:", "open_clip:")
PAPER_ALIASES = {
    "CLIP-L": ("openai/clip-vit-large-patch14-336", "ViT-L-14-336:openai"),
    "EVA-G": ("EVA01-g-14:laion400m_s11b_b41k", "EVA01-g-14-plus:merged2b_s11b_b114k"),
}
"""Paper models the file names without a loadable id: their usual checkpoints."""
THESIS_ALIASES = {
    "LLaVA v1.6 13B Vicuna (int8)": ("llava-hf/llava-v1.6-vicuna-13b-hf",),
    "LLaVA v1.6 7B Vicuna (int8)": ("llava-hf/llava-v1.6-vicuna-7b-hf",),
    "Phi-3-Vision 4.2B": ("microsoft/Phi-3-vision-128k-instruct",),
    "Qwen2-VL-7B-Instruct (int8)": ("Qwen/Qwen2-VL-7B-Instruct",),
    "Qwen2-VL-2B-Instruct": ("Qwen/Qwen2-VL-2B-Instruct",),
    "GPT-4V": ("gpt-4-vision-preview",),
    "Claude 3 Haiku": ("claude-3-haiku-20240307",),
    "GPT-4o": ("gpt-4o",),
    "GPT-4o-mini": ("gpt-4o-mini",),
}
_ID = re.compile(r"[\w.-]+/[\w.@-]+")


@cache
def published_numbers() -> dict[str, Any]:
    """The whole file: ``paper``, ``thesis``, ``fine_grained``."""
    return json.loads(resources.files("vlmclf").joinpath(RESOURCE).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class PublishedCell:
    """One printed number (``value`` None: the paper printed N/A) and where it was printed."""

    where: str
    value: float | None
    scale: float = 1.0  # multiply ours (a fraction) by this to compare: 100 for percentages


def _bare(spec: str) -> str:
    for prefix in SPEC_PREFIXES:
        if spec.startswith(prefix):
            return spec[len(prefix) :]
    return spec


def _names(ids: tuple[str, ...]) -> set[str]:
    """Each id, lower case, and its last path part (a local folder named after it matches)."""
    return {n.lower() for i in ids for n in (i, PurePath(i).name)}


def _matches(spec: str, ids: tuple[str, ...]) -> bool:
    bare = _bare(spec).rstrip("/")
    return bool({bare.lower(), PurePath(bare).name.lower()} & _names(ids))


@cache
def _paper_ids() -> dict[str, tuple[str, ...]]:
    out = {}
    for name, described in published_numbers()["paper"]["models"].items():
        ids = tuple(_ID.findall(described)) or ((described,) if " " not in described else ())
        out[name] = ids + PAPER_ALIASES.get(name, ())
    return out


def paper_model(spec: str | None) -> str | None:
    """The paper's name (``LLaVA1.5-7B``, ``CLIP-L``) for a model spec, None if it is none of
    the paper's models."""
    if not spec:
        return None
    return next((name for name, ids in _paper_ids().items() if _matches(spec, ids)), None)


def thesis_model(spec: str | None) -> str | None:
    """The thesis's name for a model spec (its baselines are named by their hub ids)."""
    if not spec:
        return None
    for cell in published_numbers()["thesis"]["cells"]:
        name = cell["model"]
        if _matches(spec, (name, *THESIS_ALIASES.get(name, ()))):
            return name
    return None


def paper_cell(table: str, model: str | None, dataset: str, **fields: Any) -> PublishedCell | None:
    """The paper's cell of ``table`` for ``model`` on ``dataset`` whose other fields equal
    ``fields`` (``setting="open"``, ``k=20``, ``row="base prompt"``); None if it printed none."""
    if model is None:
        return None
    for cell in published_numbers()["paper"]["cells"]:
        if cell["table"] != table or cell["model"] != model or cell["dataset"] != dataset:
            continue
        if all(cell.get(key) == value for key, value in fields.items()):
            detail = ", ".join(str(v) for v in fields.values())
            where = f"paper {table}, {model}" + (f", {detail}" if detail else "") + f", {dataset}"
            scale = 1.0 if cell.get("unit") == "correlation" else 100.0
            return PublishedCell(where, cell["value"], scale)
    return None


def thesis_cell(model: str | None, ways: int, metric: str) -> PublishedCell | None:
    """The thesis's ``metric`` (accuracy, precision, recall, f1: fractions) at ``ways``."""
    if model is None:
        return None
    for cell in published_numbers()["thesis"]["cells"]:
        if cell["model"] == model and cell["ways"] == ways:
            value = cell.get(metric)  # printed as a fraction: shown in percent like ours
            percent = None if value is None else round(100.0 * value, 6)
            return PublishedCell(f"thesis {ways}-way, {model}, {metric}", percent, 100.0)
    return None


def beside(ours: float | None, cell: PublishedCell | None, percent: bool = True) -> str:
    """``ours (paper X, Δ d)``, ``ours (paper N/A)`` or ``ours (no published number)``; ours is
    a fraction, shown in the published number's unit."""
    scale = cell.scale if cell is not None else (100.0 if percent else 1.0)
    text = "-" if ours is None else f"{scale * ours:.{_digits(scale)}f}"
    return f"{text} ({published_note(ours, cell)})"


def published_note(ours: float | None, cell: PublishedCell | None) -> str:
    """``paper X, Δ d`` (ours minus the paper's), ``paper N/A`` or ``no published number``."""
    if cell is None:
        return "no published number"
    if cell.value is None:
        return "paper N/A"
    digits = _digits(cell.scale)
    if ours is None:
        return f"paper {cell.value:.{digits}f}"
    return f"paper {cell.value:.{digits}f}, Δ {cell.scale * ours - cell.value:+.{digits}f}"


def _digits(scale: float) -> int:
    return 1 if scale == 100.0 else 3


def run_cell(spec: Mapping[str, Any]) -> PublishedCell | None:
    """The paper's cell a stored run reproduces, from its spec: Table 1 (open / closed world,
    CLIP zero-shot), Table 7 (K labels), Table 2 (the wordings, likelihood sum / mean)."""
    model, dataset = paper_model(str(spec.get("model") or "")), str(spec.get("dataset"))
    method, k = spec.get("method", "generate"), spec.get("k")
    options = spec.get("options") or {}
    if spec.get("cot") or options.get("cfg") is not None:
        return None
    if method == "clip":
        return paper_cell("table7", model, dataset, k=k) if k else paper_cell(
            "table1", model, dataset, setting="closed"
        )
    if method == "likelihood":
        agg = {"sum": "sum of tokens", "mean": "mean of tokens"}.get(options.get("agg", "sum"))
        return paper_cell("table2", model, dataset, row=f"prob. inference, {agg}")
    setting, prompt = spec.get("setting", "open"), spec.get("prompt", "base")
    if setting == "closed":
        if k:
            return paper_cell("table7", model, dataset, k=k)
        return paper_cell("table1", model, dataset, setting="closed") if prompt == "base" else None
    if prompt == "base":
        return paper_cell("table1", model, dataset, setting="open")
    row = WORDING_ROWS.get(str(prompt))
    return paper_cell("table2", model, dataset, row=row) if row else None


WORDING_ROWS = {"alt1": "prompt alternative 1", "alt2": "prompt alternative 2"}
"""Our wordings for the paper's Table 2 prompt rows (our reading: alt1 and alt2 kept their
names from the paper's two alternatives when alt3 was added)."""
