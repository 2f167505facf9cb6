"""How much does the answer-mapping rule move the numbers? (``vlmclf rematch RUN --match nli``)

A generation run stores every answer's text, so its predictions can be mapped to labels again
with another rule (``methods/answer_mapping.py``: the paper's containment, strict word-boundary
match, zero-shot NLI, embedding similarity) without the VLM. Each re-mapping is stored as a new
*derived* run: the same RunSpec with only ``match`` changed (so its id differs and the original
run is never touched), holding copies of the original predictions with new ``pred`` and ``hit``.
Derived runs are incremental: examples added to the original run later are mapped on the next
call, those already mapped are not redone.

The comparison covers every run in the store that differs from the given one only in ``match``
(the matchers "run so far"), on the examples of the given run: accuracy (``hit``), strict
accuracy (``pred``), macro precision / recall / F1 and the change in accuracy and F1 against the
paper's containment rule.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vlmclf.methods.answer_mapping import (
    Matcher,
    apply_matcher,
    make_matcher,
    match_id,
    parse_match_id,
)
from vlmclf.metrics.columnar import summarize_columns
from vlmclf.report.tables import csv_table, markdown_table
from vlmclf.run.identity import identity_run_id
from vlmclf.spec import RunSpec
from vlmclf.store import RunRecord, RunStore

_ORDER = {"contain": 0, "strict": 1, "exact": 2, "nli": 3, "zeroshot": 4, "embed": 5}
_METRICS = ("accuracy", "strict_accuracy", "macro_precision", "macro_recall", "macro_f1")


def rematch(
    store: RunStore,
    run_id: str,
    match: str,
    *,
    nli_model: str | None = None,
    embed_model: str | None = None,
    hypothesis: str | None = None,
    matcher: Matcher | None = None,
    out_dir: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Map the run's answers with ``match``, store the derived run, compare with its siblings.

    ``matcher`` (an already-built Matcher) skips loading a model; ``match`` still names it.
    Returns ``{run_id, derived_run_id, match, n_new, rows, files, analysis_id}``.
    """
    record = _generation_run(store, run_id)
    spec = RunSpec.model_validate(record.spec)
    mid = match_id(match, nli_model=nli_model, embed_model=embed_model, hypothesis=hypothesis)
    derived = spec.model_copy(update={"match": mid})
    derived_id, derived_identity = derived_run_identity(record, derived)
    n_new = 0
    if derived_id != run_id:
        n_new = _store_derived(
            store, derived, derived_id, derived_identity, record, matcher or mid, device
        )
    rows = comparison_rows(store, spec, set(store.columns(run_id).example_id))
    result: dict[str, Any] = {
        "run_id": run_id, "derived_run_id": derived_id, "match": mid, "n_new": n_new,
        "rows": rows, "files": write_rematch_report(rows, Path(out_dir)) if out_dir else {},
    }  # fmt: skip
    key = {"runs": spec.model_copy(update={"match": "*"}).canonical_json(), "match": mid}
    result["analysis_id"] = store.save_analysis("rematch", key, result)
    return result


def _generation_run(store: RunStore, run_id: str) -> RunRecord:
    record = store.get_run(run_id)
    if record is None:
        raise ValueError(f"no run {run_id!r} in {store.path} (see `vlmclf results`)")
    method = record.spec.get("method")
    if method != "generate":
        raise ValueError(
            f"run {run_id} used --method {method}: only generation runs have answer texts to map"
        )
    return record


def derived_run_identity(
    record: RunRecord, derived: RunSpec
) -> tuple[str, dict[str, Any] | None]:
    """The id (and identity) `eval` gives the derived spec: the source run's content identity
    with the spec replaced; a run stored before content identities keeps its spec-hash id."""
    if record.identity is None:
        return derived.run_id, None
    identity = {**record.identity, "spec": json.loads(derived.canonical_json())}
    return identity_run_id(identity), identity


def _store_derived(
    store: RunStore, derived: RunSpec, run_id: str, identity: dict[str, Any] | None,
    record: RunRecord, matcher: Matcher | str, device: str,
) -> int:  # fmt: skip
    """Map the source predictions the derived run lacks, a chunk at a time (each chunk stored
    as it is mapped); return how many were added."""
    started = time.perf_counter()
    store.start_run(run_id, derived.canonical_json(), record.class_names, record.n_total,
                    identity=identity)  # fmt: skip
    done = store.done_ids(run_id)
    added = 0
    for chunk in store.prediction_chunks(record.run_id):
        todo = [p for p in chunk if p.example_id not in done]
        if not todo:
            continue
        if isinstance(matcher, str):  # built once, on the first chunk with work
            matcher = make_matcher(matcher, device=device)
        mapped = apply_matcher(todo, record.class_names, matcher, label=derived.match)
        added += store.add_predictions(run_id, mapped)
    summary = summarize_columns(store.column_chunks(run_id), record.class_names)
    meta = {"summary": summary, "derived_from": record.run_id, "match": derived.match}
    store.finish_run(run_id, "done", time.perf_counter() - started, meta=meta)
    return added


def sibling_runs(store: RunStore, spec: RunSpec) -> list[tuple[RunSpec, RunRecord]]:
    """Runs whose spec equals ``spec`` in everything but ``match``, containment first."""
    found = []
    for record in store.list_runs():
        try:
            other = RunSpec.model_validate(record.spec)
        except ValueError:
            continue
        if other.model_copy(update={"match": spec.match}) == spec:
            found.append((other, record))
    return sorted(found, key=lambda pair: (_match_rank(pair[0].match), pair[0].match))


def _match_rank(match: str) -> int:
    try:
        return _ORDER[parse_match_id(match).name]
    except ValueError:  # a match id written by a newer vlmclf: list it last
        return len(_ORDER)


def comparison_rows(store: RunStore, spec: RunSpec, example_ids: set[str]) -> list[dict[str, Any]]:
    """One row per matcher run so far: metrics on ``example_ids`` and the change from contain."""
    rows = []
    for other, record in sibling_runs(store, spec):
        chunks = store.column_chunks(record.run_id, example_ids=example_ids)
        summary = summarize_columns(chunks, record.class_names)
        rows.append({
            "match": other.match, "run_id": record.run_id, "n": summary["n"],
            "n_no_pred": summary["n_no_pred"],
            **{name: summary[name] for name in _METRICS},
        })  # fmt: skip
    base = next((r for r in rows if r["match"] == "contain"), rows[0] if rows else None)
    for row in rows:
        row["delta_accuracy"] = _diff(row["accuracy"], base["accuracy"] if base else None)
        row["delta_macro_f1"] = _diff(row["macro_f1"], base["macro_f1"] if base else None)
    return rows


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def write_rematch_report(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, str]:
    """The comparison as Markdown, CSV and a grouped bar chart; returns the file paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = [
        {"match": r["match"], "accuracy": r["accuracy"], "strict acc.": r["strict_accuracy"],
         "macro P": r["macro_precision"], "macro R": r["macro_recall"], "macro F1": r["macro_f1"],
         "Δ acc. vs contain": r["delta_accuracy"], "Δ F1 vs contain": r["delta_macro_f1"],
         "no label": r["n_no_pred"], "n": r["n"], "run": r["run_id"]}
        for r in rows
    ]  # fmt: skip
    files = {"markdown": out_dir / "rematch.md", "csv": out_dir / "rematch.csv"}
    files["markdown"].write_text(markdown_table(table) + "\n", encoding="utf-8")
    files["csv"].write_text(csv_table(table), encoding="utf-8")
    files["figure"] = plot_rematch(rows, out_dir / "rematch.png")
    return {name: str(path) for name, path in files.items()}


def plot_rematch(rows: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: each metric, one bar per matcher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["accuracy", "strict acc.", "macro P", "macro R", "macro F1"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, row in enumerate(rows):
        values = [row[m] if row[m] is not None else 0.0 for m in _METRICS]
        positions = [x + (i - (len(rows) - 1) / 2) * width for x in range(len(labels))]
        ax.bar(positions, values, width, label=row["match"])
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("Answer mapping: how the rule moves the metrics")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
