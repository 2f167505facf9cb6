"""Hard multiple choice (FOCI's idea): the K-1 wrong classes a CLIP finds most confusable.

``hard-text`` offers, with the true class, the K-1 class names whose text embeddings (the CLIP's
zero-shot classifier weights: templates ensembled, as ``vlmclf.methods.zeroshot`` builds them)
are nearest the true name's; ``hard-image`` the K-1 wrong classes the CLIP scores highest for
that very image. Only distinct names are offered, as in ``vlmclf.data.choices``.

Mining runs the choice model once per (choice model and its weights, class list, templates,
dataset, split) and keeps a ranked list of up to ``MINED_DEPTH`` negatives per class (text) or
per example id (image) in a JSON cache under ``vlmclf.cache.cache_root()``, so any K up to
``MINED_DEPTH + 1`` reuses it, and a larger ``--limit`` mines only the new examples. The run
identity names the choice mode, the choice model and its weights fingerprint (the negatives are
a function of those, the class list, the templates and the images, all in the identity), and
each Prediction stores the choices it was offered.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlmclf.cache import cache_root
from vlmclf.data.choices import stable_seed
from vlmclf.data.classnames import canonical_indices, unique_class_indices
from vlmclf.data.types import BadExampleError, Example
from vlmclf.methods.prompts import load_templates
from vlmclf.methods.zeroshot import class_text_embeddings
from vlmclf.models.base import ImageTextEncoder
from vlmclf.run.identity import weights_fingerprint
from vlmclf.spec import RunSpec

HARD_MODES = ("hard-text", "hard-image")
MINED_DEPTH = 63
"""Negatives kept per class or image: K up to 64 reuses one mining."""
MINING_RULE = "clip-zeroshot-v1"
IMAGE_BATCH = 32


@dataclass
class MinedChoices:
    """Ranked hard negatives (canonical class indices, hardest first) and how to offer them."""

    mode: str
    negatives: dict[str, list[int]] = field(default_factory=dict)
    """hard-text: keyed by the true class's canonical index (as text); hard-image: by example id."""

    def negatives_for(self, example_id: str, label: int, class_names: list[str]) -> list[int]:
        key = str(canonical_indices(class_names)[label]) if self.mode == "hard-text" else example_id
        return self.negatives[key]

    def offered(self, example_id: str, label: int, class_names: list[str], k: int, order: str,
                seed: int) -> list[int]:  # fmt: skip
        """The true class and its k-1 hardest negatives, in index order (``fixed``) or
        shuffled by (seed, example id) (``random``), like ``sample_choices``."""
        true_index = canonical_indices(class_names)[label]
        chosen = [true_index, *self.negatives_for(example_id, label, class_names)[: k - 1]]
        if order == "fixed":
            return sorted(chosen)
        random.Random(stable_seed(seed, example_id)).shuffle(chosen)
        return chosen


# ----- what the identity names ---------------------------------------------------------------


def check_hard_choices(spec: RunSpec, n_distinct: int) -> None:
    """One-line errors for a hard-choice spec that cannot run."""
    if spec.choices == "random":
        return
    if spec.choice_model is None:
        raise ValueError(f"--choices {spec.choices} needs --choice-model (a CLIP spec)")
    if spec.k is None:
        raise ValueError(f"--choices {spec.choices} offers K classes: pass --k")
    if spec.method in ("generate", "likelihood") and spec.setting != "closed":
        raise ValueError(f"--choices {spec.choices} offers a label set: use --setting closed")
    if spec.k > min(n_distinct, MINED_DEPTH + 1):
        raise ValueError(
            f"--k {spec.k} with --choices {spec.choices}: at most "
            f"{min(n_distinct, MINED_DEPTH + 1)} (the true class and {MINED_DEPTH} mined negatives)"
        )


def choice_identity(spec: RunSpec) -> dict[str, Any] | None:
    """What decides mined choices beyond the class list, templates and examples."""
    if spec.choices == "random" or spec.choice_model is None:
        return None
    return {"mode": spec.choices, "model": spec.choice_model, "rule": MINING_RULE,
            "weights": weights_fingerprint(spec.choice_model), "depth": MINED_DEPTH}  # fmt: skip


# ----- mining --------------------------------------------------------------------------------


def hard_text_negatives(text: torch.Tensor, class_names: list[str]) -> dict[str, list[int]]:
    """Per distinct class, the other distinct classes by cosine similarity of their (normalised)
    text embeddings, most similar first (ties: lower index first)."""
    unique = unique_class_indices(class_names)
    similarity = text[unique] @ text[unique].T
    found = {}
    for row, index in enumerate(unique):
        ranked = _ranked(similarity[row], exclude=row)
        found[str(index)] = [unique[i] for i in ranked]
    return found


def hard_image_negatives(
    encoder: ImageTextEncoder, text: torch.Tensor, class_names: list[str],
    examples: Sequence[Example],
) -> dict[str, list[int]]:  # fmt: skip
    """Per example, the wrong distinct classes by the encoder's zero-shot score of its image,
    highest first. An image that does not decode is left out (its prediction fails anyway)."""
    unique = unique_class_indices(class_names)
    canonical = canonical_indices(class_names)
    position = {index: pos for pos, index in enumerate(unique)}
    found: dict[str, list[int]] = {}
    for start in range(0, len(examples), IMAGE_BATCH):
        loaded = []
        for example in examples[start : start + IMAGE_BATCH]:
            try:
                loaded.append((example, example.load()))
            except BadExampleError:
                continue
        if not loaded:
            continue
        images = encoder.encode_images([image for _, image in loaded]).float()
        scores = images @ text[unique].T
        for (example, _), row in zip(loaded, scores, strict=True):
            ranked = _ranked(row, exclude=position[canonical[example.label]])
            found[example.id] = [unique[i] for i in ranked]
    return found


def _ranked(row: torch.Tensor, exclude: int) -> list[int]:
    """Positions of ``row`` by descending value (stable: ties keep index order), minus one."""
    order = torch.sort(row, descending=True, stable=True).indices.tolist()
    return [i for i in order if i != exclude][:MINED_DEPTH]


def mine_choices(
    spec: RunSpec, class_names: list[str], dataset_name: str, split: str,
    examples: Sequence[Example], load_encoder: Any,
) -> MinedChoices:  # fmt: skip
    """The hard negatives of ``examples`` (or of every class), from the cache where it has them;
    the choice model is loaded (``load_encoder(spec.choice_model)``) only when some are missing."""
    templates = load_templates(spec.templates)
    path = _cache_path(spec, class_names, templates, dataset_name, split)
    mined = MinedChoices(spec.choices, _read_cache(path))
    wanted = [] if spec.choices == "hard-text" else [e for e in examples
                                                     if e.id not in mined.negatives]  # fmt: skip
    if (spec.choices == "hard-text" and mined.negatives) or (
        spec.choices == "hard-image" and not wanted
    ):
        return mined
    encoder = load_encoder(spec.choice_model)
    if not callable(getattr(encoder, "encode_images", None)):
        raise ValueError(f"--choice-model {spec.choice_model} is not a CLIP-style encoder")
    with torch.inference_mode():
        text = class_text_embeddings(encoder, class_names, templates)
        if spec.choices == "hard-text":
            mined.negatives = hard_text_negatives(text, class_names)
        else:
            mined.negatives.update(hard_image_negatives(encoder, text, class_names, wanted))
    _write_cache(path, mined.negatives)
    return mined


def _cache_path(spec: RunSpec, class_names: list[str], templates: list[str], dataset: str,
                split: str) -> Path:  # fmt: skip
    key = json.dumps([choice_identity(spec), class_names, templates,
                      dataset if spec.choices == "hard-image" else None,
                      split if spec.choices == "hard-image" else None])  # fmt: skip
    name = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_root() / "choices" / f"{spec.choices}-{name}.json"


def _read_cache(path: Path) -> dict[str, list[int]]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a torn or foreign file: mine again and replace it
        return {}


def _write_cache(path: Path, negatives: dict[str, list[int]]) -> None:
    """Written whole to a temporary file, then renamed: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(negatives), encoding="utf-8")
    os.replace(temporary, path)
