"""A finished run (or analysis) as files beside the store: ``--output-path DIR`` and
``--log-samples``.

``results_<run_id>.json`` holds what lm-eval's, VLMEvalKit's and CLIP_benchmark's users look
for in a results file: the summary, the run's identity, the protocol's resolved settings, the
library versions the run was computed with and the git revision of vlmclf where it is a
checkout. ``samples_<run_id>.jsonl`` (``--log-samples``) is one line per example: the image's
path, the label's name, the question asked, the answer, the predicted name and the hit.

An analysis (probe, finetune, frequency) is written by the same rules under its analysis id:
``results_<analysis_id>.json`` with its summary (the stored result, what ``--json`` prints), its
identity (the kind and spec its id hashes), protocol, versions, threads and git revision, and
``samples_<analysis_id>.jsonl`` where it has per-example outputs (the probe's test examples).

The store stays the record: these files are written from it after the run, each in one
replace, so a reader never sees half a file and re-running rewrites them.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from vlmclf.data import load_dataset
from vlmclf.methods.prompts import build_question
from vlmclf.records import Prediction
from vlmclf.run.results import StoredPredictions
from vlmclf.spec import RunSpec
from vlmclf.store import RunStore
from vlmclf.store.json_safe import dumps

RESULTS_VERSION = 1


def results_path(out_dir: Path, run_id: str) -> Path:
    return out_dir / f"results_{run_id}.json"


def samples_path(out_dir: Path, run_id: str) -> Path:
    return out_dir / f"samples_{run_id}.jsonl"


SampleRows = Callable[[StoredPredictions], Iterable[dict[str, Any]]]
"""The samples log of a run whose examples are not a dataset listed again (ImageWikiQA's
questions): its rows, from the stored predictions."""


def write_run_files(
    out_dir: Path, summary: dict[str, Any], stored: StoredPredictions, *,
    data_root: str | None, classes: str | None, log_samples: bool,
    sample_rows: SampleRows | None = None,
) -> list[Path]:  # fmt: skip
    """Write the results JSON (and the samples JSONL) of a stored run; returns the paths.
    ``sample_rows`` replaces eval's rows (``sample_row`` over the dataset listed again)."""
    with RunStore(stored.store_path, read_only=True) as store:
        record = store.get_run(stored.run_id)
    if record is None:
        raise ValueError(f"run {stored.run_id} is not in {stored.store_path}")
    environment = record.meta.get("environment_last") or record.meta.get("environment")
    document = {
        "version": RESULTS_VERSION,
        "run_id": stored.run_id,
        "status": record.status,
        "summary": summary,
        "identity": record.identity,
        "protocol": summary.get("protocol"),
        "resolved_prompt": record.meta.get("resolved_prompt"),
        "class_names": stored.class_names,
        "versions": environment,
        "threads": record.threads,
        "vlmclf_git_revision": git_revision(),
        "elapsed_s": record.elapsed_s,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }
    samples = None
    if log_samples:
        samples = (sample_rows(stored) if sample_rows is not None
                   else _dataset_sample_rows(stored, data_root, classes))  # fmt: skip
    return write_results(out_dir, stored.run_id, document, samples)


def write_analysis_files(
    out_dir: Path, store_path: Path, analysis_id: str, *, protocol: dict[str, Any] | None,
    samples: Iterable[dict[str, Any]] | None = None,
) -> list[Path]:  # fmt: skip
    """The results JSON (and, given ``samples``, the samples JSONL) of a stored analysis, by the
    rules of a run's: its versions and threads are the environment its result recorded."""
    with RunStore(store_path, read_only=True) as store:
        record = store.get_analysis(analysis_id)
    if record is None:
        raise ValueError(f"analysis {analysis_id} is not in {store_path}")
    result = dict(record.result)
    environment = result.pop("environment", None) or {}
    threads = environment.get("torch_threads")
    document = {
        "version": RESULTS_VERSION,
        "analysis_id": analysis_id,
        "kind": record.kind,
        "status": result.get("status", "done"),
        "summary": result,
        "identity": {"kind": record.kind, "spec": record.spec},
        "protocol": protocol,
        "versions": environment or None,
        "threads": None if threads is None else int(threads),
        "vlmclf_git_revision": git_revision(),
        "created_at": record.created_at,
    }
    return write_results(out_dir, analysis_id, document, samples)


def write_results(
    out_dir: Path, result_id: str, document: dict[str, Any],
    samples: Iterable[dict[str, Any]] | None,
) -> list[Path]:  # fmt: skip
    """``results_<id>.json`` and, given rows, ``samples_<id>.jsonl``, each in one replace."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_replace_with(results_path(out_dir, result_id),
                             json.dumps(document, indent=2, default=str) + "\n")]  # fmt: skip
    if samples is not None:
        lines = (dumps(row) + "\n" for row in samples)
        written.append(_replace_with(samples_path(out_dir, result_id), lines))
    return written


def _dataset_sample_rows(
    stored: StoredPredictions, data_root: str | None, classes: str | None
) -> Iterator[dict[str, Any]]:
    sources = example_sources(stored.spec, data_root, classes)
    for p in _predictions(stored):
        yield sample_row(p, stored.spec, stored.class_names, sources)


def sample_row(
    p: Prediction, spec: RunSpec, class_names: list[str], sources: dict[str, str]
) -> dict[str, Any]:
    """One example as the samples log shows it: names, not indices, beside the stored fields."""
    return {
        "example_id": p.example_id,
        "image": sources.get(p.example_id),
        "label": p.label,
        "label_name": class_names[p.label],
        "prompt": question_asked(spec, class_names, p.choices),
        "answer": p.text,
        "pred": p.pred,
        "pred_name": None if p.pred is None else class_names[p.pred],
        "hit": p.hit,
        "choices": None if p.choices is None else [class_names[c] for c in p.choices],
        "outcome": p.outcome,
        "flag": p.flag,
        "error": p.error,
    }


def question_asked(spec: RunSpec, class_names: list[str], choices: list[int] | None) -> str | None:
    """The user text the model was given for one example (None: CLIP and classifiers see the
    image alone); the family's chat format around it is in the results file's identity."""
    if spec.method in ("clip", "classifier"):
        return None
    names = None if choices is None else [class_names[c] for c in choices]
    return build_question(spec.prompt, names, spec.cot and spec.prompt_template is None)


def example_sources(spec: RunSpec, data_root: str | None, classes: str | None) -> dict[str, str]:
    """Example id -> the image's path (``path#index`` inside an IDX or record file), from the
    dataset listed again (cheap: no image is opened)."""
    dataset = load_dataset(spec.dataset, data_root=data_root, split=spec.split, classes=classes)
    return {example.id: image_path(example.source) for example in dataset.examples}


def stored_run_sources(spec: dict[str, Any], meta: dict[str, Any]) -> dict[str, str]:
    """Example id -> image path for a stored run, from the data location its run recorded;
    ValueError (or OSError) saying why when the dataset cannot be listed again."""
    data = meta.get("data")
    if not data:
        raise ValueError("the run does not record where its data was read from (stored by an "
                         "older vlmclf)")  # fmt: skip
    listed = load_dataset(data["dataset"], data_root=data["data_root"], split=spec.get("split"),
                          classes=data["classes"])  # fmt: skip
    return {example.id: image_path(example.source) for example in listed.examples}


def image_path(source: str) -> str:
    """A file source as an absolute path (``#index`` kept), so the log reads from anywhere."""
    file, mark, index = source.rpartition("#") if "#" in source else (source, "", "")
    return os.path.abspath(file) + mark + index if os.path.isfile(file) else source


def git_revision() -> str | None:
    """The commit of the vlmclf checkout this code runs from; None when it is not one (an
    installed wheel) or git is missing."""
    package = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    revision = done.stdout.strip()
    return revision if done.returncode == 0 and revision else None


def _predictions(stored: StoredPredictions) -> Iterator[Prediction]:
    for chunk in stored.prediction_chunks():
        yield from chunk


def _replace_with(path: Path, text: str | Iterable[str]) -> Path:
    """Write ``path`` through a temporary file and one rename: never half a file."""
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as f:
            if isinstance(text, str):
                f.write(text)
            else:
                f.writelines(text)  # the rows may fail half-way (a dataset that moved)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path
