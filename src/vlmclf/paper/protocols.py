"""Protocols as data: ``paper``, ``thesis`` and ``clean`` settings per experiment and family.

Each protocol is a JSON file in ``data/protocols/``: per experiment (generate, likelihood, clip,
probe, finetune, frequency, wikiqa) a table of settings, and per model family the settings that
differ for it (prompt templates, the likelihood answer prefix). ``resolve`` merges the two; the
command line then lets every explicitly given option win. Methods only ever see the resolved
values in the RunSpec, never the protocol's name.

Prompt templates hold ``{image}`` (the family's image placeholder) and ``{question}`` (the user
text); a template for chain of thought carries the CoT cue itself, so the question then does not.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

PROTOCOLS = ("clean", "paper", "thesis")
DEFAULT_PROTOCOL = "clean"
EXPERIMENTS = ("generate", "likelihood", "clip", "probe", "finetune", "frequency", "wikiqa")

Settings = dict[str, Any]


@cache
def load_protocol(name: str) -> dict[str, Any]:
    """The protocol's table, read from the shipped JSON file."""
    if name not in PROTOCOLS:
        raise ValueError(f"--protocol: unknown protocol {name!r}; accepted: {', '.join(PROTOCOLS)}")
    text = resources.files("vlmclf").joinpath(f"data/protocols/{name}.json").read_text()
    return json.loads(text)


def resolve(name: str, experiment: str, family: str | None = None) -> Settings:
    """Every setting of ``experiment`` under protocol ``name``, with ``family``'s rows applied.

    Families the protocol has no row for get the experiment's general settings (for the paper:
    those of its main model, LLaVA-1.5) and no prompt template (the family's own format).
    """
    protocol = load_protocol(name)
    table = protocol["experiments"].get(experiment)
    if table is None:
        raise ValueError(undefined_experiment(name, experiment))
    settings = dict(table.get("settings", {}))
    settings.update(table.get("families", {}).get(family or "", {}))
    return settings


def undefined_experiment(name: str, experiment: str) -> str:
    """Why a protocol cannot run ``experiment`` and what to use instead, in one line: a protocol
    holds the settings of a source that did not run it (the thesis ran no probe), and settings
    borrowed from another protocol would be reported under a name they do not belong to."""
    protocol = load_protocol(name)
    source = protocol["title"].split(":")[0]
    ran = ", ".join(protocol["experiments"])
    others = [p for p in PROTOCOLS if experiment in load_protocol(p)["experiments"]]
    return (f"--protocol {name} has no {experiment} settings ({source} defines only {ran}); "
            f"for {experiment} use --protocol {' or '.join(others)}")  # fmt: skip


def split_for(name: str, dataset: str, role: str = "test") -> str | None:
    """The split the protocol evaluates (``test``) or trains (``train``) ``dataset`` on."""
    return load_protocol(name).get("splits", {}).get(dataset, {}).get(role)


def prompt_template(settings: Settings, family: str | None, cot: bool, protocol: str) -> str | None:
    """The resolved template for a run, None for the family's own format.

    A protocol that gives a family a template but no CoT variant did not run CoT on it.
    """
    if "prompt_template" not in settings:
        return None
    if not cot:
        return settings["prompt_template"]
    template = settings.get("cot_prompt_template")
    if template is None:
        raise ValueError(
            f"--protocol {protocol}: no chain-of-thought prompt for the {family} family "
            "(the protocol's code does not run CoT on it); drop --cot or pass --prompt-template"
        )
    return template


# ---------------------------------------------------------------------------- model families


def family_key_for_config(config: Any) -> str:
    """The protocol's family key for a transformers config; LLaVA-NeXT splits by its LM."""
    from vlmclf.models.families import adapter_for_config

    name = adapter_for_config(config).name
    if name != "llava_next":
        return name
    text_type = getattr(getattr(config, "text_config", None), "model_type", "")
    return "llava_next_mistral" if text_type == "mistral" else "llava_next_vicuna"


RANDOM_FAMILY_KEYS = {"llava_next": "llava_next_mistral"}  # the tiny LLaVA-NeXT has a Mistral LM
API_PREFIXES = ("openai:", "anthropic:", "gemini:")


def model_family(model: str) -> str | None:
    """The protocol family of a model spec, read before loading it (a config at most).

    ``hf:`` checkpoints are recognised from their config (local folder or the hub cache);
    None when it cannot be read, so family-specific settings are then not applied.
    """
    prefix, _, rest = model.partition(":")
    if prefix == "random":
        return RANDOM_FAMILY_KEYS.get(rest, rest)
    if prefix == "organism":
        return f"organism_{rest}"
    if model.startswith(API_PREFIXES):
        return "api"
    if prefix == "hf":
        try:
            from transformers import AutoConfig

            return family_key_for_config(AutoConfig.from_pretrained(rest))
        except (OSError, ValueError):
            return None
    return None


# ---------------------------------------------------------------------------- eval options

EVAL_EXPERIMENTS = {
    "generate": "generate",
    "likelihood": "likelihood",
    "clip": "clip",
    "classifier": "classifier",
}


def resolve_eval(
    protocol: str,
    method: str,
    model: str,
    given: dict[str, Any],
    explicit: set[str],
) -> dict[str, Any]:
    """The eval options a run uses: the protocol's values, then every explicit option.

    ``given`` holds the parsed option values (defaults included), ``explicit`` the names the
    user typed. Returns the same keys, plus ``prompt_template``, ``family`` and
    ``answer_marker`` (the protocol reads a generated answer after it; None: the new tokens).
    """
    experiment = EVAL_EXPERIMENTS[method]
    # only a protocol with family rows needs the family (reading an hf: config costs a lookup)
    rows = load_protocol(protocol)["experiments"].get(experiment, {}).get("families")
    family = model_family(model) if rows else None
    settings = resolve(protocol, experiment, family)
    chosen = dict(given)
    cot = bool(given.get("cot"))
    budget = settings.get("cot_max_new_tokens" if cot else "max_new_tokens")
    proposed = {
        "prompt": settings.get("prompt"),
        "order": settings.get("order"),
        "max_new_tokens": budget,
        "dtype": settings.get("dtype"),
        "match": settings.get("match"),
        "templates": settings.get("templates"),
        "answer_prefix": settings.get("answer_prefix"),
        "setting": settings.get("setting"),
        "sample": settings.get("sample"),
    }
    for key, value in proposed.items():
        if key in given and key not in explicit and (value is not None or key in _NULLABLE):
            chosen[key] = value
    if given.get("cfg") is not None and "calibration" not in explicit:
        chosen["calibration"] = (
            "dataset_mean" if settings.get("cfg_prior") == "dataset_mean" else "none"
        )
    if "prompt_template" in explicit:
        chosen["prompt_template"] = given.get("prompt_template")
    elif method in ("clip", "classifier"):  # no prompt
        chosen["prompt_template"] = None
    else:
        chosen["prompt_template"] = prompt_template(settings, family, cot, protocol)
    chosen["family"] = family
    chosen["answer_marker"] = settings.get("answer_marker") if method == "generate" else None
    chosen["offer"] = settings.get("offer")
    return chosen


_NULLABLE = {"max_new_tokens", "answer_prefix"}
