"""``vlmclf report``: one self-contained HTML page for the runs and analyses of a store.

The page is one file a researcher can mail or archive: styles inline, figures inline as base64
PNG, no script, and a Content-Security-Policy that forbids loading anything (so it opens the
same offline). Every string that comes from a model, a dataset or a user (class names, answers,
prompts, model ids, specs) goes through :func:`esc` on its way in; nothing else builds markup.

Layout: the paper's Table 1 (rows: model x setting x protocol, columns: datasets, cells:
accuracy with its 95% bootstrap interval), the figures (per-class accuracy of every run, then
each stored analysis), and one section per run with its identity (spec, meta) and its
per-class view (collapsible).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from vlmclf.metrics import canonical_indices, per_class_accuracy, summarize
from vlmclf.records import Prediction
from vlmclf.report.html_figures import (
    analysis_figures,
    analysis_table,
    column_union,
    per_class_figure,
)
from vlmclf.report.runs import resolve_run_id
from vlmclf.spec import RunSpec
from vlmclf.store import AnalysisRecord, RunRecord, RunStore

FALLBACK_PROTOCOL = "clean"  # what a run stored before specs named their protocol was
SAMPLE_ANSWERS = 3  # wrong answers shown per class
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;white-space:nowrap}
.ci{color:#666;font-size:.85em}.proto{font-size:.8em;background:#eef;padding:0 .3em}
pre{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:.8em;white-space:pre-wrap}
figure{display:inline-block;margin:.5em;vertical-align:top}
figcaption{font-size:.85em;color:#444;max-width:40em}img{max-width:100%}
.note{color:#666;font-size:.9em}.warn{color:#a33}
details{margin:.4em 0}summary{cursor:pointer}
"""


def esc(value: Any) -> str:
    """Text made safe for HTML content and attribute values (None shows as a dash)."""
    return "-" if value is None else escape(str(value), quote=True)


def json_block(obj: Any) -> str:
    """Pretty JSON in a ``<pre>``, escaped."""
    return f"<pre>{esc(json.dumps(obj, indent=2, ensure_ascii=False, default=str))}</pre>"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def pct_ci(ci: Sequence[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f'<span class="ci">[{pct(ci[0])}, {pct(ci[1])}]</span>'


def html_table(rows: Sequence[Mapping[str, Any]], css_id: str | None = None) -> str:
    """Rows of plain values as an escaped table; floats in [0, 1] are shown to 3 decimals."""
    if not rows:
        return '<p class="note">no rows</p>'
    columns = column_union(rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(_plain_cell(row.get(c)) for c in columns) + "</tr>" for row in rows
    )
    ident = f' id="{esc(css_id)}"' if css_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plain_cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.3f}</td>'
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, default=str)
    return f"<td>{esc(value)}</td>"


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
class ClassRow:
    """One class of one run: how many labelled examples, accuracy, a few wrong answers."""

    name: str
    n: int
    n_failed: int
    accuracy: float | None
    wrong_answers: tuple[str, ...]


@dataclass(frozen=True)
class RunView:
    """A stored run with what the page shows of it."""

    record: RunRecord
    summary: dict[str, Any]
    per_class: dict[str, float]
    classes: list[ClassRow]


def _answer_text(p: Prediction, class_names: Sequence[str]) -> str:
    if p.text is not None:
        return p.text
    return class_names[p.pred] if p.pred is not None else "(no prediction)"


def class_rows(
    preds: Sequence[Prediction], class_names: Sequence[str], per_class: Mapping[str, float]
) -> list[ClassRow]:
    """Per class name in class-list order: counts, accuracy and up to SAMPLE_ANSWERS answers
    that were judged wrong (the model's own text where it wrote one)."""
    canon = canonical_indices(class_names)
    n_ok: dict[int, int] = {}
    n_failed: dict[int, int] = {}
    wrong: dict[int, list[str]] = {}
    for p in preds:
        c = canon[p.label]
        if not p.ok:
            n_failed[c] = n_failed.get(c, 0) + 1
            continue
        n_ok[c] = n_ok.get(c, 0) + 1
        correct = p.hit if p.hit is not None else (p.pred is not None and canon[p.pred] == c)
        if not correct and len(wrong.setdefault(c, [])) < SAMPLE_ANSWERS:
            wrong[c].append(_answer_text(p, class_names))
    return [
        ClassRow(
            class_names[c],
            n_ok.get(c, 0),
            n_failed.get(c, 0),
            per_class.get(class_names[c]),
            tuple(wrong.get(c, [])),
        )  # fmt: skip
        for c in sorted(set(n_ok) | set(n_failed))
    ]


def load_run_view(store: RunStore, record: RunRecord) -> RunView:
    """The run's stored summary (recomputed from its predictions where none was stored, e.g.
    an interrupted run) and its per-class view, by the paper's containment rule."""
    preds = store.predictions(record.run_id)
    summary = (record.meta or {}).get("summary") or summarize(preds, record.class_names)
    per_class = per_class_accuracy(preds, record.class_names, rule="contain")
    return RunView(record, summary, per_class, class_rows(preds, record.class_names, per_class))


# ----- Table 1 ---------------------------------------------------------------------------------
def _row_key(spec: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(spec.get("model")), setting_label(spec), protocol_label(spec))


def _cell_html(view: RunView) -> str:
    s = view.summary
    record = view.record
    status = "" if record.status == "done" else f' <span class="warn">({esc(record.status)})</span>'
    title = f"run {record.run_id}, n={s.get('n')}, failed={s.get('n_failed')}"
    return (
        f'<a href="#run-{esc(record.run_id)}" title="{esc(title)}">{pct(s.get("accuracy"))}</a> '
        f"{pct_ci(s.get('ci95'))}{status}"
    )


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
        "over the class scores. Each number links to its run below.</p>"
    )


# ----- figures and runs ------------------------------------------------------------------------
def _run_caption(record: RunRecord) -> str:
    spec = record.spec
    return f"{spec.get('model')} on {dataset_label(spec)}, {setting_label(spec)}"


def per_class_figures_html(views: Sequence[RunView]) -> str:
    figures = []
    for view in views:
        uri = per_class_figure(view.per_class, "per-class accuracy")
        if uri is None:
            continue
        caption = f"run {view.record.run_id}: {_run_caption(view.record)}"
        figures.append(
            f'<figure class="per-class"><img alt="{esc("per-class accuracy, " + caption)}" '
            f'src="{uri}"><figcaption>{esc(caption)}</figcaption></figure>'
        )
    return "".join(figures) or '<p class="note">no run has labelled predictions</p>'


def summary_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    names = ("n", "n_failed", "accuracy", "strict_accuracy", "top5", "balanced_accuracy",
             "macro_f1")  # fmt: skip
    row = {name: summary.get(name) for name in names}
    row["ci95"] = summary.get("ci95")
    return [row]


def class_table_html(classes: Sequence[ClassRow]) -> str:
    head = "<th>class</th><th>n</th><th>failed</th><th>accuracy (%)</th><th>wrong answers</th>"
    body = "".join(
        f"<tr><td>{esc(c.name)}</td><td class='num'>{c.n}</td><td class='num'>{c.n_failed}</td>"
        f"<td class='num'>{pct(c.accuracy)}</td>"
        f"<td>{'<br>'.join(esc(a) for a in c.wrong_answers)}</td></tr>"
        for c in classes
    )
    return f'<table class="per-class"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def run_section_html(view: RunView) -> str:
    """The run's identity (id, status, stored spec, meta other than the summary), its headline
    numbers and its per-class table (collapsed)."""
    record = view.record
    meta = {k: v for k, v in (record.meta or {}).items() if k != "summary"}
    return (
        f'<section class="run" id="run-{esc(record.run_id)}">'
        f"<h3>run {esc(record.run_id)}</h3>"
        f"<p>{esc(_run_caption(record))}; protocol "
        f'<span class="proto">{esc(protocol_label(record.spec))}</span>; status '
        f"{esc(record.status)}; {record.n_done} of {record.n_total} examples stored; "
        f"{record.elapsed_s:.1f} s; created {esc(record.created_at)}</p>"
        f"{html_table(summary_rows(view.summary))}"
        f"<details><summary>per-class accuracy ({len(view.classes)} classes)</summary>"
        f"{class_table_html(view.classes)}</details>"
        f"<details><summary>stored spec</summary>{json_block(record.spec)}</details>"
        f"<details><summary>run record meta</summary>{json_block(meta)}</details>"
        "</section>"
    )


def analysis_section_html(analysis: AnalysisRecord) -> str:
    figures, problem = analysis_figures(analysis.kind, analysis.result)
    imgs = "".join(
        f'<figure><img alt="{esc(analysis.kind)} figure" src="{uri}"></figure>' for uri in figures
    )
    warn = f'<p class="warn">{esc(problem)}</p>' if problem else ""
    table = analysis_table(analysis.kind, analysis.result)
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
    with RunStore(store_path, create=False) as store:
        records = select_runs(store, run_prefixes)
        views = [load_run_view(store, record) for record in records]
        analyses = store.list_analyses()
    if run_prefixes:
        analyses = [a for a in analyses if refers_to(a, {r.run_id for r in records})]
    return page_html(store_path, views, analyses)


def page_html(
    store_path: Path, views: Sequence[RunView], analyses: Sequence[AnalysisRecord]
) -> str:
    from vlmclf import __version__

    generated = datetime.now(UTC).isoformat(timespec="seconds")
    runs_html = "".join(run_section_html(v) for v in views) or '<p class="note">no runs</p>'
    analyses_html = "".join(analysis_section_html(a) for a in analyses)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>vlmclf report</title><style>{STYLE}</style></head><body>"
        "<h1>vlmclf report</h1>"
        f'<p class="note">store {esc(store_path)}; {len(views)} runs, {len(analyses)} analyses; '
        f"generated {generated} by vlmclf {esc(__version__)}</p>"
        f'<h2 id="results">Results (Table 1 layout)</h2>{table1_html(views) if views else ""}'
        f'<h2 id="figures">Per-class accuracy</h2>{per_class_figures_html(views)}'
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
