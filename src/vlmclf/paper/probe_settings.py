"""The probe's options under a protocol: the protocol's values, then every explicit option.

``data/protocols/<name>.json`` holds the probe settings of each protocol; this module maps them
onto ``vlmclf probe``'s options (the paper's 500 epochs become 100 on ImageNet, as in its
scripts). The probe code itself only ever sees the resolved ``ProbeConfig``.
"""

from __future__ import annotations

from typing import Any

from vlmclf.data.readers import parse_dataset_spec
from vlmclf.paper.protocols import load_protocol, model_family, resolve

PROBE_OPTIONS = (
    "epochs", "lr", "probe_batch_size", "weight_decays", "val_fraction", "standardize",
    "shuffle", "shuffle_seed", "reported", "dtype", "layer", "prompt",
)  # fmt: skip


def protocol_probe_values(protocol: str, dataset: str) -> dict[str, Any]:
    """The options ``protocol`` sets for a probe evaluated on ``dataset`` (None: not set)."""
    settings = resolve(protocol, "probe")
    reshuffle = settings.get("reshuffle_each_epoch")
    return {
        "epochs": epochs_for(settings, "epochs", dataset),
        "lr": settings.get("lr"),
        "probe_batch_size": settings.get("probe_batch_size"),
        "weight_decays": settings.get("weight_decays"),
        "val_fraction": settings.get("val_fraction"),
        "standardize": settings.get("standardize"),
        "shuffle": None if reshuffle is None else ("each-epoch" if reshuffle else "once"),
        "shuffle_seed": settings.get("shuffle_seed"),
        "reported": settings.get("reported"),
        "dtype": settings.get("dtype"),
        "layer": settings.get("layer"),
        "prompt": settings.get("prompt"),
    }


def clip_baseline_values(protocol: str, dataset: str) -> tuple[int | None, bool]:
    """(epochs, L2-normalise) of the CLIP probe baseline under ``protocol``: the paper's code
    trains it on L2-normalised image embeddings for 300 epochs (40 on ImageNet). (None, False):
    the protocol trains it like the VLM's probe."""
    settings = resolve(protocol, "probe")
    normalise = str(settings.get("clip_features", "")).startswith("l2")
    return epochs_for(settings, "clip_epochs", dataset), normalise


def epochs_for(settings: dict[str, Any], key: str, dataset: str) -> int | None:
    """``key``'s epochs, or ``<key>_imagenet``'s on ImageNet where the protocol has one (the
    paper's scripts train fewer epochs on ImageNet's 1.28M images)."""
    on_imagenet = parse_dataset_spec(dataset)[0] == "imagenet"
    return (settings.get(f"{key}_imagenet") if on_imagenet else None) or settings.get(key)


def resolve_probe_options(
    protocol: str, dataset: str, given: dict[str, Any], explicit: set[str]
) -> dict[str, Any]:
    """``given`` (the parsed options, defaults included) with the protocol's values put in
    wherever the user did not type the option (``explicit``)."""
    chosen = dict(given)
    for name, value in protocol_probe_values(protocol, dataset).items():
        if name in given and name not in explicit and value is not None:
            chosen[name] = value
    return chosen



def probe_prompt(protocol: str, model: str) -> tuple[str | None, str]:
    """(prompt template, pooled positions) of ``model``'s features under ``protocol``: the
    paper's ``extract_feature.py`` sends its own per-family prompt (None: the family's chat
    format) and averages over every position (``"all"``); clean averages the real tokens."""
    rows = load_protocol(protocol)["experiments"].get("probe", {}).get("families")
    family = model_family(model) if rows else None  # reading an hf: config costs a lookup
    settings = resolve(protocol, "probe", family)
    return settings.get("prompt_template"), settings.get("positions", "real")
