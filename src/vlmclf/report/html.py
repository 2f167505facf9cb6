"""``vlmclf report``: one self-contained HTML page for the runs and analyses of a store.

The page is one file a researcher can mail or archive: styles inline, figures inline as base64
PNG, no script, and a Content-Security-Policy that forbids loading anything (so it opens the
same offline). Every string that comes from a model, a dataset or a user (class names, answers,
prompts, model ids, specs) goes through ``html_parts.esc`` on its way in.

Layout: the paper's Table 1 (rows: model x setting x protocol, columns: datasets, cells:
accuracy with its 95% bootstrap interval), per-class accuracy (a collapsible table per dataset,
classes x runs, and a bar chart per run), each stored analysis with its figures, and one section
per run with its identity (spec, meta) and its per-class view (collapsible).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vlmclf.metrics.columnar import per_class_accuracy_columns, summarize_columns
from vlmclf.report.html_figures import analysis_figures, analysis_table, per_class_figure
from vlmclf.report.html_parts import (
    ClassRow,
    class_rows,
    class_table_html,
    comparison_table_html,
    esc,
    html_table,
    json_block,
    pct,
    pct_ci,
)
from vlmclf.report.published import published_note, run_cell
from vlmclf.report.runs import resolve_run_id
from vlmclf.spec import RunSpec
from vlmclf.store import AnalysisRecord, RunRecord, RunStore

FALLBACK_PROTOCOL = "clean"  # what a run stored before specs named their protocol was
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em;display:block;max-width:100%;
overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;white-space:nowrap}
.ci{color:#666;font-size:.85em}.proto{font-size:.8em;background:#eef;padding:0 .3em}
pre{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:.8em;white-space:pre-wrap}
figure{display:inline-block;margin:.5em;vertical-align:top}
figcaption{font-size:.85em;color:#444;max-width:40em}img{max-width:100%}
.note{color:#666;font-size:.9em}.warn{color:#a33}
details{margin:.4em 0}summary{cursor:pointer}
"""


# ----- what a run is ---------------------------------------------------------------------------
def default_protocol() -> str:
    """The protocol a stored spec means when it names none. Stored specs leave default values
    out, so this is RunSpec's default where RunSpec has a ``protocol`` field, else clean."""
    field = RunSpec.model_fields.get("protocol")
    default = getattr(field, "default", None)
    return default if isinstance(default, str) and default else FALLBACK_PROTOCOL


def protocol_label(spec: Mapping[str, Any]) -> str:
    """The run's protocol (``paper``, ``thesis``, ``clean``), as stored in its spec."""
    protocol = spec.get("protocol")
    if protocol is None or protocol == "":
        return default_protocol()
    return protocol if isinstance(protocol, str) else json.dumps(protocol, sort_keys=True)


def dataset_label(spec: Mapping[str, Any]) -> str:
    split = spec.get("split")
    return str(spec.get("dataset")) + (f":{split}" if split else "")


def setting_label(spec: Mapping[str, Any]) -> str:
    """How the model was asked, as the paper names it, plus every setting off its default."""
    method = spec.get("method")
    if method == "clip":
        parts = ["CLIP zero-shot"]
    elif method == "likelihood":
        parts = [f"likelihood, {spec.get('setting', 'open')} world"]
    else:
        parts = [f"generation, {spec.get('setting', 'open')} world"]
    if spec.get("k") is not None:
        parts.append(f"K={spec['k']} ({spec.get('order', 'fixed')} order)")
    if spec.get("prompt", "base") != "base":
        parts.append(f"prompt={spec['prompt']}")
    if spec.get("cot"):
        parts.append("CoT")
    if spec.get("templates", "paper") != "paper":
        parts.append(f"templates={spec['templates']}")
    if spec.get("match", "contain") != "contain":
        parts.append(f"match={spec['match']}")
    parts += [f"{key}={value}" for key, value in sorted((spec.get("options") or {}).items())]
    return ", ".join(parts)


@dataclass(frozen=True)
class RunView:
    """A stored run with what the page shows of it."""

    record: RunRecord
    summary: dict[str, Any]
    per_class: dict[str, float]
    classes: list[ClassRow]


def load_run_view(store: RunStore, record: RunRecord) -> RunView:
    """The run's stored summary (recomputed from its predictions where none was stored, e.g.
    an interrupted run) and its per-class view, by the paper's containment rule."""
    names = record.class_names
    summary = (record.meta or {}).get("summary") or summarize_columns(
        store.column_chunks(record.run_id), names
    )
    per_class = per_class_accuracy_columns(store.columns(record.run_id), names, rule="contain")
    answers = store.iter_predictions(record.run_id, arrays=False)  # one chunk at a time
    return RunView(record, summary, per_class, class_rows(answers, names, per_class))


# ----- Table 1 ---------------------------------------------------------------------------------
def _row_key(spec: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(spec.get("model")), setting_label(spec), protocol_label(spec))


def _cell_html(view: RunView) -> str:
    s = view.summary
    record = view.record
    status = "" if record.status == "done" else f' <span class="warn">({esc(record.status)})</span>'
    if s.get("provisional"):  # transient failures left: the next run retries them
        status += ' <span class="warn">(provisional)</span>'
    title = f"run {record.run_id}, n={s.get('n')}, failed={s.get('n_failed')}"
    return (
        f'<a href="#run-{esc(record.run_id)}" title="{esc(title)}">{pct(s.get("accuracy"))}</a> '
        f"{pct_ci(s.get('ci95'))}{status}{_published_html(view)}"
    )


def _published_html(view: RunView) -> str:
    """The number the paper prints for this cell and ours minus it, or that it prints none."""
    cell = run_cell(view.record.spec)
    accuracy = view.summary.get("accuracy")
    ours = float(accuracy) if isinstance(accuracy, int | float) else None
    where = f' title="{esc(cell.where)}"' if cell is not None else ""
    return f'<br><span class="paper"{where}>({esc(published_note(ours, cell))})</span>'


def table1_html(views: Sequence[RunView]) -> str:
    """Models x settings x protocols down, datasets across; VLM rows first, CLIP rows last, as in
    the paper. Two runs in one cell (e.g. differing in seed) are both shown."""
    datasets = list(dict.fromkeys(dataset_label(v.record.spec) for v in views))
    cells: dict[tuple[str, str, str], dict[str, list[RunView]]] = {}
    for view in views:
        row = cells.setdefault(_row_key(view.record.spec), {})
        row.setdefault(dataset_label(view.record.spec), []).append(view)
    ordered = sorted(cells, key=lambda key: key[1].startswith("CLIP"))  # stable: first-seen
    head = "<th>model</th><th>setting</th><th>protocol</th>" + "".join(
        f"<th>{esc(d)}</th>" for d in datasets
    )
    body = []
    for key in ordered:
        model, setting, protocol = key
        tds = "".join(
            '<td class="num">' + "<br>".join(_cell_html(v) for v in cells[key].get(d, [])) + "</td>"
            for d in datasets
        )
        body.append(
            f"<tr><td>{esc(model)}</td><td>{esc(setting)}</td>"
            f'<td><span class="proto">{esc(protocol)}</span></td>{tds}</tr>'
        )
    return (
        f'<table id="table1"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        '<p class="note">Accuracy (%) with its 95% bootstrap interval over examples. Generation: '
        "the paper's rule (the answer contains the true class name); likelihood and CLIP: top-1 "
        "over the class scores. Each number links to its run below; under it, the number the "
        "paper prints for that cell and ours minus it (Δ), or that it prints none.</p>"
    )


# ----- figures and runs ------------------------------------------------------------------------
def _run_caption(record: RunRecord) -> str:
    spec = record.spec
    return f"{spec.get('model')} on {dataset_label(spec)}, {setting_label(spec)}"


def per_class_comparisons_html(views: Sequence[RunView]) -> str:
    """One collapsible table per dataset: its classes down, its runs across."""
    by_dataset: dict[str, list[RunView]] = {}
    for view in views:
        by_dataset.setdefault(dataset_label(view.record.spec), []).append(view)
    parts = []
    for dataset, group in by_dataset.items():
        names = [name for view in group for name in view.record.class_names]
        columns = [
            (v.record.run_id, f"{v.record.spec.get('model')}, {setting_label(v.record.spec)}",
             v.per_class)
            for v in group
        ]  # fmt: skip
        parts.append(
            f"<details><summary>{esc(dataset)}: per-class accuracy (%) of {len(group)} runs"
            f"</summary>{comparison_table_html(names, columns)}</details>"
        )
    return "".join(parts)


def per_class_title(record: RunRecord) -> str:
    """The chart's own title names the run: model, setting, dataset and the run id."""
    spec = record.spec
    return (f"{spec.get('model')}, {setting_label(spec)}\n"
            f"{dataset_label(spec)}, run {record.run_id[:8]}: per-class accuracy")  # fmt: skip


def per_class_figures_html(views: Sequence[RunView]) -> str:
    figures = []
    for view in views:
        uri = per_class_figure(view.per_class, per_class_title(view.record))
        if uri is None:
            continue
        caption = f"run {view.record.run_id}: {_run_caption(view.record)}"
        figures.append(
            f'<figure class="per-class"><img alt="{esc("per-class accuracy, " + caption)}" '
            f'src="{uri}"><figcaption>{esc(caption)}</figcaption></figure>'
        )
    return "".join(figures) or '<p class="note">no run has labelled predictions</p>'


SUMMARY_COLUMNS = ("n", "n_failed", "n_data_failed", "n_transient", "accuracy", "ci95",
                   "strict_accuracy", "top5", "balanced_accuracy", "macro_f1")  # fmt: skip


def summary_rows(
    summary: Mapping[str, Any], error_shares: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """The headline numbers, in one row; counts a summary does not hold are left out. A run
    typed by ``vlmclf errors`` gets a column per open-world error type (its share)."""
    row = {name: summary.get(name) for name in SUMMARY_COLUMNS if name in summary}
    return [{**row, **(error_shares or {})}]


def error_shares_by_run(analyses: Sequence[AnalysisRecord]) -> dict[str, dict[str, float]]:
    """Run id -> share of each error type, from its latest stored ``errors`` analysis."""
    shares: dict[str, dict[str, float]] = {}
    for analysis in sorted(analyses, key=lambda a: a.created_at):
        result = analysis.result
        if analysis.kind == "errors" and isinstance(result.get("shares"), dict):
            shares[str(result.get("run_id"))] = {
                kind: value.get("share") for kind, value in result["shares"].items()
                if isinstance(value, dict)
            }  # fmt: skip
    return shares


def run_section_html(view: RunView, error_shares: Mapping[str, float] | None = None) -> str:
    """The run's identity (id, status, stored spec, what the id hashes, meta other than the
    summary), its headline numbers with what their denominator counts, and its per-class table
    (collapsed)."""
    record = view.record
    meta = {k: v for k, v in (record.meta or {}).items() if k != "summary"}
    denominator = view.summary.get("denominator")
    parts = [
        f'<section class="run" id="run-{esc(record.run_id)}">',
        f"<h3>run {esc(record.run_id)}</h3>",
        f"<p>{esc(_run_caption(record))}; protocol "
        f'<span class="proto">{esc(protocol_label(record.spec))}</span>; status '
        f"{esc(record.status)}; {record.n_done} of {record.n_total} examples stored; "
        f"{record.elapsed_s:.1f} s; created {esc(record.created_at)}</p>",
        html_table(summary_rows(view.summary, error_shares)),
        f'<p class="note">{esc(denominator)}</p>' if denominator else "",
        _details(
            f"per-class accuracy ({len(view.classes)} classes)", class_table_html(view.classes)
        ),
        _details("stored spec", json_block(record.spec)),
    ]
    if record.identity is not None:
        parts.append(_details("run identity (what the run id hashes)", json_block(record.identity)))
    parts += [_details("run record meta", json_block(meta)), "</section>"]
    return "".join(parts)


def _details(summary_text: str, content_html: str) -> str:
    """A collapsed block; ``summary_text`` is plain text, ``content_html`` markup."""
    return f"<details><summary>{esc(summary_text)}</summary>{content_html}</details>"


def analysis_section_html(analysis: AnalysisRecord, table_shown_above: bool = False) -> str:
    """The analysis's figures, its table (unless the page shows it above), spec and result."""
    figures, problem = analysis_figures(analysis.kind, analysis.result)
    imgs = "".join(
        f'<figure><img alt="{esc(analysis.kind)} figure" src="{uri}"></figure>' for uri in figures
    )
    warn = f'<p class="warn">{esc(problem)}</p>' if problem else ""
    table = [] if table_shown_above else analysis_table(analysis.kind, analysis.result)
    return (
        f'<section class="analysis" id="analysis-{esc(analysis.analysis_id)}">'
        f"<h3>{esc(analysis.kind)} {esc(analysis.analysis_id)}</h3>"
        f'<p class="note">created {esc(analysis.created_at)}</p>{warn}{imgs}'
        f"{html_table(table) if table else ''}"
        f"<details><summary>spec</summary>{json_block(analysis.spec)}</details>"
        f"<details><summary>result</summary>{json_block(analysis.result)}</details>"
        "</section>"
    )


# ----- the page --------------------------------------------------------------------------------
def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _strings(value)


def refers_to(analysis: AnalysisRecord, run_ids: set[str]) -> bool:
    """Whether the analysis names one of the runs (its id, or a prefix of 6+ characters)."""
    for text in _strings([analysis.spec, analysis.result]):
        if len(text) >= 6 and any(run_id.startswith(text) for run_id in run_ids):
            return True
    return False


def select_runs(store: RunStore, prefixes: Sequence[str] | None) -> list[RunRecord]:
    """All runs (oldest first), or those named by id prefixes; ValueError for an unknown one."""
    if not prefixes:
        return store.list_runs()
    wanted = list(dict.fromkeys(resolve_run_id(store, prefix) for prefix in prefixes))
    return [store.get_run(run_id) for run_id in wanted]


def render_report(store_path: Path, run_prefixes: Sequence[str] | None = None) -> str:
    """The whole page as a string. With ``run_prefixes``, only those runs and the analyses that
    refer to them."""
    with RunStore(store_path, read_only=True) as store:
        records = select_runs(store, run_prefixes)
        views = [load_run_view(store, record) for record in records]
        analyses = store.list_analyses()
    if run_prefixes:
        analyses = [a for a in analyses if refers_to(a, {r.run_id for r in records})]
    return page_html(store_path, views, analyses)


def page_html(
    store_path: Path,
    views: Sequence[RunView],
    analyses: Sequence[AnalysisRecord],
    lead_html: str = "",
    table_above: str | None = None,
) -> str:
    """The page; ``lead_html`` (markup the caller built with ``esc``) goes first, under the
    title: the demo puts its findings there, and names the analysis (``table_above``) whose
    table it already shows, so that the page shows it once."""
    from vlmclf import __version__

    generated = datetime.now(UTC).isoformat(timespec="seconds")
    shares = error_shares_by_run(analyses)
    runs_html = "".join(
        run_section_html(v, shares.get(v.record.run_id)) for v in views
    ) or '<p class="note">no runs</p>'
    analyses_html = "".join(
        analysis_section_html(a, table_shown_above=a.analysis_id == table_above) for a in analyses
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>vlmclf report</title><style>{STYLE}</style></head><body>"
        "<h1>vlmclf report</h1>"
        f'<p class="note">store {esc(store_path)}; {len(views)} runs, {len(analyses)} analyses; '
        f"generated {generated} by vlmclf {esc(__version__)}</p>{lead_html}"
        f'<h2 id="results">Results (Table 1 layout)</h2>{table1_html(views) if views else ""}'
        f'<h2 id="figures">Per-class accuracy</h2>{per_class_comparisons_html(views)}'
        f"{per_class_figures_html(views)}"
        f'<h2 id="analyses">Analyses</h2>'
        f"{analyses_html or '<p class=note>no stored analyses</p>'}"
        f'<h2 id="runs">Runs</h2>{runs_html}'
        "</body></html>\n"
    )


def write_report(out: Path, store_path: Path, run_prefixes: Sequence[str] | None = None) -> Path:
    """Render and write the page; returns its path."""
    text = render_report(store_path, run_prefixes)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
