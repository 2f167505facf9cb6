"""Pieces of the HTML report: escaped text, tables of plain values, per-class rows.

Everything that turns a stored string into markup is here and goes through :func:`esc`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from vlmclf.metrics import canonical_indices
from vlmclf.records import Prediction

SAMPLE_ANSWERS = 3  # wrong answers shown per class


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


def column_union(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of the rows, in first-seen order."""
    return list(dict.fromkeys(key for row in rows for key in row))


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
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return f'<td class="num">[{", ".join(f"{v:.3f}" for v in value)}]</td>'  # an interval
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, default=str)
    return f"<td>{esc(value)}</td>"


@dataclass(frozen=True)
class ClassRow:
    """One class of one run: how many labelled examples, accuracy, a few wrong answers."""

    name: str
    n: int
    n_failed: int
    accuracy: float | None
    wrong_answers: tuple[str, ...]


def _answer_text(p: Prediction, class_names: Sequence[str]) -> str:
    if p.text is not None:
        return p.text
    return class_names[p.pred] if p.pred is not None else "(no prediction)"


def class_rows(
    preds: Iterable[Prediction], class_names: Sequence[str], per_class: Mapping[str, float]
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


def class_table_html(classes: Sequence[ClassRow]) -> str:
    head = "<th>class</th><th>n</th><th>failed</th><th>accuracy (%)</th><th>wrong answers</th>"
    body = "".join(
        f"<tr><td>{esc(c.name)}</td><td class='num'>{c.n}</td><td class='num'>{c.n_failed}</td>"
        f"<td class='num'>{pct(c.accuracy)}</td>"
        f"<td>{'<br>'.join(esc(a) for a in c.wrong_answers)}</td></tr>"
        for c in classes
    )
    return f'<table class="per-class"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def comparison_table_html(
    class_names: Sequence[str], columns: Sequence[tuple[str, str, Mapping[str, float]]]
) -> str:
    """Per-class accuracy (%) of several runs on one dataset: a row per class, a column per
    run (anchor id, header text, per-class accuracies); a class a run never saw shows "-"."""
    head = "<th>class</th>" + "".join(
        f'<th><a href="#run-{esc(run_id)}">{esc(text)}</a></th>' for run_id, text, _ in columns
    )
    body = "".join(
        f"<tr><td>{esc(name)}</td>"
        + "".join(f"<td class='num'>{pct(acc.get(name))}</td>" for _, _, acc in columns)
        + "</tr>"
        for name in dict.fromkeys(class_names)
    )
    table = f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
    return f'<table class="per-class-comparison">{table}</table>'
