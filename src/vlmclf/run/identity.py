"""A run's identity is the content that made its predictions, not the command that asked.

Two runs share an id (and so stored predictions) only when everything that can change a
prediction is the same: the RunSpec, the class list, the CLIP templates' *content*, the resolved
prompt text actually sent (after the model family's chat template), the generation budget, the
image preprocessing, the API server, the weights (a fingerprint of local files, or the cached hub
revision), and a fingerprint of the examples (ids, resolved paths, labels, splits, per-file size
and modification time; ``--verify-images`` hashes the bytes too).

Design for resume: everything here is computed *without loading the model*. The family prompt
format needs the processor (tokenizer + chat template) at most, which is cheap next to the
weights; a finished run is then recognised and resumed without loading the model, while an edited
prompt, chat template, manifest or templates file yields a different id and a fresh run.

Facts that do not decide a prediction (library versions, device, image backend) are recorded
beside the identity by :func:`environment_facts` and compared on resume, never hashed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlmclf.data.images import image_decode_identity
from vlmclf.data.types import Example

IDENTITY_VERSION = 3  # the store schema that introduced content identities
PromptFormat = Callable[[str], str]


def _sha(text: str | bytes, length: int = 16) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:length]


# ----- examples ------------------------------------------------------------------------------
def _source_file(source: str) -> Path | None:
    """The file an example's ``source`` names (``path`` or ``path#index`` for IDX/records)."""
    for candidate in (source, source.rsplit("#", 1)[0]):
        if candidate and os.path.isfile(candidate):
            return Path(candidate)
    return None


def _file_facts(path: Path | None, source: str, verify_images: bool) -> str:
    if path is None:
        return f"{source}\0missing"
    stat = path.stat()
    facts = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    if verify_images:
        facts += "\0" + hashlib.sha256(path.read_bytes()).hexdigest()
    return facts


def examples_fingerprint(examples: Sequence[Example], verify_images: bool = False) -> str:
    """Hash of the selected examples in order: id, label, split, per-example prompt, the
    resolved file with its size and mtime (and its bytes with ``verify_images``).

    A relabelled manifest, another ``--data-root`` or a replaced image changes it; listing the
    same files again does not. Stat calls only, so it is cheap next to decoding one image.
    """
    digest = hashlib.sha256()
    file_facts: dict[str, str] = {}  # IDX files hold many examples: stat once
    for example in examples:
        path = _source_file(example.source)
        key = example.source if path is None else str(path)
        if key not in file_facts:
            file_facts[key] = _file_facts(path, example.source, verify_images)
        row = [example.id, str(example.label), example.split, example.prompt or "",
               example.source, file_facts[key]]  # fmt: skip
        digest.update("\x1f".join(row).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()[:20]


# ----- weights -------------------------------------------------------------------------------
def weights_fingerprint(model_spec: str) -> str | None:
    """A fingerprint of local weights a spec points at (``hf:<dir>``, ``organism:vlm@<dir>``,
    the organism's shipped weights), or the cached hub revision of ``hf:<org/name>``; None for
    specs whose weights cannot change under the same name (``random:``, API models)."""
    _, _, name = model_spec.partition(":")
    folder = _weights_folder(model_spec, name)
    if folder is None or not folder.is_dir():
        return _hub_revision(model_spec, name)
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _weights_folder(model_spec: str, name: str) -> Path | None:
    if model_spec.startswith("organism:"):
        kind, _, folder = name.partition("@")
        if folder:
            return Path(folder)
        try:
            from vlmclf.organism.load import default_weights_dir
        except ImportError:
            return None
        try:
            return default_weights_dir(kind)
        except ValueError:  # not a shipped organism: loading it fails with the clear error
            return None
    if model_spec.startswith("hf:") and Path(name).exists():
        return Path(name)
    return None


def _hub_revision(model_spec: str, name: str) -> str | None:
    """The commit the local Hugging Face cache resolves ``main`` to (a file read, no network)."""
    if not model_spec.startswith("hf:") or "/" not in name:
        return None
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"models--{name.replace('/', '--')}"
    ref = folder / "refs" / "main"
    return f"rev:{ref.read_text().strip()}" if ref.is_file() else None


# ----- prompts -------------------------------------------------------------------------------
def prompt_format_for(model_spec: str, trust_remote_code: bool = False) -> PromptFormat | None:
    """How the model wraps a bare question (family chat template, image placeholder), built from
    the processor alone; None where the question is sent as it is (API models) or has no
    readable format (encoders, the organism, whose format is fixed by its weights fingerprint)."""
    prefix, _, name = model_spec.partition(":")
    if prefix == "random":
        return _random_prompt_format(name)
    if prefix == "hf":
        from vlmclf.models.families import adapter_for_config
        from vlmclf.models.hf_loading import load_config, load_processor

        config = load_config(name, trust_remote_code)
        adapter = adapter_for_config(config)
        if adapter.kind != "vlm":
            return None
        processor = load_processor(name, adapter, trust_remote_code)
        return lambda question: adapter.prompt(question, processor, config)
    return None


@functools.lru_cache(maxsize=16)
def _random_prompt_format(family: str) -> PromptFormat | None:
    """A ``random:`` family's format is code, fixed for the process: built once (sweeps)."""
    from vlmclf.models.families import adapter_by_name
    from vlmclf.models.random_models import random_spec

    adapter = adapter_by_name(family)
    if adapter.kind != "vlm":
        return None
    built = random_spec(family)
    return lambda question: adapter.prompt(question, built.processor, built.config)


def resolved_prompts(questions: Sequence[str], prompt_format: PromptFormat | None) -> list[str]:
    """The text each question becomes on its way to the model."""
    if prompt_format is None:
        return list(questions)
    return [prompt_format(question) for question in questions]


# ----- images --------------------------------------------------------------------------------
def image_preprocessing_identity(image_max_side: int | None) -> dict[str, Any]:
    """Every setting that changes the pixels a model receives, in one place: how files are
    decoded (EXIF orientation, high bit depth, the pixel limit) and any downscaling for APIs.
    Unset settings are left out, so adding one keeps existing ids."""
    settings: dict[str, Any] = {"image_max_side": image_max_side, **image_decode_identity()}
    return {key: value for key, value in settings.items() if value is not None}


# ----- half precision ------------------------------------------------------------------------
HALF_PRECISION_LOADING = "from_pretrained"
"""How a half-precision model is made: as ``from_pretrained(dir, dtype=...)`` makes it, buffers
(rotary ``inv_freq``) kept in float32 (issue 25). Earlier runs cast the whole model, buffers
included, and got other numbers; naming the rule keeps those runs from being resumed into."""


def half_precision_identity(dtype: str) -> dict[str, str]:
    """``{"half_precision": rule}`` for a float16/bfloat16 run, nothing for float32 (ids kept)."""
    return {} if dtype == "float32" else {"half_precision": HALF_PRECISION_LOADING}


# ----- the whole identity --------------------------------------------------------------------
def content_identity(
    spec_json: str,
    *,
    class_names: Sequence[str],
    templates: Sequence[str] | None,
    prompts: Sequence[str] | None,
    max_new_tokens: int | None,
    preprocessing: dict[str, Any],
    base_url: str | None,
    weights: str | None,
    examples: str,
    choice_keys: str | None = None,
    choices: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The identity as a JSON-ready dict: the spec plus the content it resolved to."""
    identity: dict[str, Any] = {
        "version": IDENTITY_VERSION,
        "spec": json.loads(spec_json),
        "classes": _sha(json.dumps(list(class_names))),
        "examples": examples,
    }
    identity.update(half_precision_identity(identity["spec"].get("dtype", "float32")))
    optional = {
        "templates": None if templates is None else _sha(json.dumps(list(templates))),
        "prompts": None if prompts is None else _sha(json.dumps(list(prompts))),
        "max_new_tokens": max_new_tokens,
        "preprocessing": preprocessing or None,
        "base_url": base_url,
        "weights": weights,
        "choice_keys": choice_keys,
        "choices": choices,
    }
    identity.update({key: value for key, value in optional.items() if value is not None})
    return identity


def identity_run_id(identity: dict[str, Any]) -> str:
    """The run id: a hash of the canonical JSON of the identity."""
    return _sha(json.dumps(identity, sort_keys=True, separators=(",", ":")))


# ----- environment (recorded, not hashed) ----------------------------------------------------
def environment_facts(device: str) -> dict[str, str]:
    """Library versions, device, torch's CPU thread count and image backend: recorded beside a
    run, never part of its id. The thread count is one because CPU float sums are split by it:
    likelihood scores move by up to ~1e-6 between thread counts (torchrun gives each rank one)."""
    import torch

    facts = {"python": platform.python_version(), "device": device}
    facts["torch_threads"] = str(torch.get_num_threads())
    return facts | library_versions()


def library_versions() -> dict[str, str]:
    """The Python and library versions and the image backend, read without importing torch (for
    results computed without it, such as the frequency analysis)."""
    from importlib.metadata import PackageNotFoundError, version

    facts = {"python": platform.python_version()}
    for package in ("vlmclf", "torch", "transformers", "pillow", "open_clip_torch"):
        try:
            facts[package] = version(package)
        except PackageNotFoundError:
            continue
    try:
        from PIL import features

        facts["image_backend"] = (
            "pillow-simd"
            if ".post" in facts.get("pillow", "")
            else ("libjpeg-turbo" if features.check_feature("libjpeg_turbo") else "libjpeg")
        )
    except Exception:  # noqa: BLE001 - a fact, never a reason to fail
        pass
    return facts


LATER_FACTS = frozenset({"torch_threads"})
"""Facts recorded since a later release: a run stored before has none, which is no change."""


def environment_changes(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """``name old -> new`` for every recorded fact that differs (a thread count with why)."""
    names = sorted(set(before) | set(now))
    changes = []
    for name in names:
        if before.get(name) == now.get(name) or (name in LATER_FACTS and name not in before):
            continue
        change = f"{name} {before.get(name, '?')} -> {now.get(name, '?')}"
        if name == "torch_threads":
            change += " (CPU scores can move by ~1e-6 with the thread count)"
        changes.append(change)
    return changes
