"""A small store for the HTML report's tests: three runs written through RunStore from
synthetic predictions (no model), class names and answers full of markup, three analyses.
The CLIP run keeps one transient failure, so its headline is provisional."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vlmclf.records import Prediction
from vlmclf.store import RunStore

SCRIPT_NAME = "<script>document.title='pwned-name';document.body.append('INJECTED')</script>"
IMG_NAME = "dog<img src=x onerror=\"document.title='pwned-img'\">"
PIPE_NAME = "pipe | name\nwith a newline"
CLASS_NAMES = ["cat", SCRIPT_NAME, IMG_NAME, PIPE_NAME, "$x$ tabby"]
EVIL_ANSWER = "it is a <script>document.title='pwned-answer'</script> <b>bold</b> | x"
EVIL_MODEL = "random:llava<i>x</i>"
EVIL_PROMPT = "<img src=x onerror=\"document.title='pwned-meta'\">What is this?"
IDENTITY = {"prompt": "USER: <image>\nWhat is in this photo?</script>", "examples": "sha256:e1"}

# (label, hit) of the generation run: 9 of 12 right.
GENERATION = [(0, True), (0, True), (0, False), (1, True), (1, True), (1, False),
              (2, True), (2, True), (3, True), (3, False), (4, True), (4, True)]  # fmt: skip
# (label, pred) of the CLIP run: 4 of 6 right.
CLIP = [(0, 0), (1, 1), (2, 0), (3, 3), (4, 4), (4, 1)]


def run_id_of(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


GENERATION_SPEC = {"model": EVIL_MODEL, "dataset": "toy", "method": "generate",
                   "protocol": "paper"}  # fmt: skip
CLIP_SPEC = {"model": "random:clip", "dataset": "toy", "method": "clip"}
OTHER_SPEC = {"model": EVIL_MODEL, "dataset": "toy2", "split": "test", "method": "generate",
              "setting": "closed", "k": 2, "order": "random", "protocol": "paper"}  # fmt: skip


def generation_preds() -> list[Prediction]:
    preds = []
    for i, (label, hit) in enumerate(GENERATION):
        text = CLASS_NAMES[label] if hit else EVIL_ANSWER
        preds.append(Prediction(f"g{i}", label, text=text, hit=hit, pred=label if hit else None))
    preds.append(Prediction.failed("g-bad", 2, "cannot decode <image> & co"))
    return preds


def _clip_preds() -> list[Prediction]:
    preds = []
    for i, (label, pred) in enumerate(CLIP):
        scores = [0.0] * len(CLASS_NAMES)
        scores[pred] = 1.0
        preds.append(Prediction(f"c{i}", label, scores=scores, pred=pred))
    preds.append(Prediction.failed("c-timeout", 0, "timed out", outcome="transient_failure"))
    return preds


def _store_run(store: RunStore, spec: dict[str, Any], preds: list[Prediction],
               meta: dict[str, Any], identity: dict[str, Any] | None = None) -> str:  # fmt: skip
    run_id = run_id_of(spec)
    store.start_run(run_id, json.dumps(spec), CLASS_NAMES, len(preds), identity=identity)
    store.add_predictions(run_id, preds)
    store.finish_run(run_id, "done", 1.5, meta=meta)
    return run_id


def build_report_store(path: Path) -> dict[str, str]:
    """Write the store; returns the run ids by name."""
    from vlmclf.metrics import summarize

    with RunStore(path) as store:
        gen = generation_preds()
        ids = {
            "generation": _store_run(
                store,
                GENERATION_SPEC,
                gen,
                {
                    "summary": summarize(gen, CLASS_NAMES),
                    "resolved_prompt": EVIL_PROMPT,
                    "data_fingerprint": "sha256:abc123",
                },
                IDENTITY,
            ),  # fmt: skip
            "clip": _store_run(
                store, CLIP_SPEC, _clip_preds(), {"summary": summarize(_clip_preds(), CLASS_NAMES)}
            ),
        }
        other = [Prediction("o0", 0, text="cat", hit=True, pred=0)]
        store.start_run(run_id_of(OTHER_SPEC), json.dumps(OTHER_SPEC), CLASS_NAMES, 4)
        store.add_predictions(run_id_of(OTHER_SPEC), other)  # interrupted: no summary stored
        ids["other"] = run_id_of(OTHER_SPEC)
        _store_analyses(store, ids)
    return ids


def _store_analyses(store: RunStore, ids: dict[str, str]) -> None:
    rows = [
        {"model": EVIL_MODEL, "dataset": "toy", "k": k, "accuracy": acc, "ci_low": acc - 0.1,
         "ci_high": acc + 0.05, "n": 12, "n_failed": 0, "run_id": ids["generation"]}
        for k, acc in (("2", 0.9), ("5", 0.6))
    ]  # fmt: skip
    store.save_analysis(
        "sweep",
        {"models": [EVIL_MODEL], "axes": {"k": ["2", "5"]}},
        {"rows": rows, "axes": {"k": ["2", "5"]}, "n_distinct": {"toy": 5}},
    )
    bins = [{"bin": i, "lo": lo, "hi": hi, "n_classes": 2, "median_count": lo,
             "mean_accuracy": acc, "sem_accuracy": 0.05}
            for i, (lo, hi, acc) in enumerate(((0, 3, 0.4), (4, 9, 0.7)))]  # fmt: skip
    store.save_analysis("frequency", {"run": ids["clip"][:8]},
                        {"counts": {name: i for i, name in enumerate(CLASS_NAMES)},
                         "bins": bins, "correlation": {"n_classes": 5}})  # fmt: skip
    store.save_analysis("mystery", {"note": SCRIPT_NAME}, {"value": 1})
