"""Report writers: hostile class names cannot break a Markdown table or inject HTML or links,
and no CSV cell runs as a spreadsheet formula; constant data gives an undefined correlation."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from typer.testing import CliRunner

from vlmclf.analysis.frequency.stats import write_frequency_table
from vlmclf.cli import app
from vlmclf.records import Prediction
from vlmclf.report.cells import csv_cell, latex_cell, markdown_cell
from vlmclf.report.tables import csv_table, latex_table, markdown_table
from vlmclf.store import RunStore

HOSTILE = [
    "pipe | split",
    "two\nlines",
    "windows\r\nline",
    "<script>alert(1)</script>",
    "[click me](javascript:alert(1))",
    "![img](http://x/y.png)",
    "back\\|slash",
    '=HYPERLINK("http://evil","x")',
    "+1+2",
    "-2+3",
    "@SUM(A1)",
    "\tTAB",
]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", line))


def assert_safe_markdown_table(text: str, n_rows: int, n_columns: int) -> None:
    lines = text.splitlines()
    assert len(lines) == n_rows + 2  # header, rule, one line per row: no cell broke its row
    for line in lines:
        assert unescaped_pipes(line) == n_columns + 1, line
    assert "<script" not in text and "<" not in text.replace("<br>", "")
    assert "](" not in text.replace("\\](", "")  # no live link or image syntax


def test_markdown_table_escapes_every_hostile_cell() -> None:
    rows = [{"class": name, "accuracy": 0.5} for name in HOSTILE]
    assert_safe_markdown_table(markdown_table(rows), len(rows), 2)


def test_markdown_cell_keeps_plain_names_readable() -> None:
    assert markdown_cell("golden retriever") == "golden retriever"
    assert markdown_cell("a|b") == "a\\|b"
    assert markdown_cell("x\ny") == "x<br>y"
    assert markdown_cell("<b>") == "&lt;b&gt;"


def formula_cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row
            if cell.startswith(FORMULA_STARTS)]  # fmt: skip


def test_csv_table_neutralises_formulas_but_keeps_numbers() -> None:
    rows = [{"class": name, "delta": -0.25, "text_delta": "-0.25"} for name in HOSTILE]
    text = csv_table(rows)
    cells = formula_cells(text)
    assert cells == ["-0.25"] * len(HOSTILE) * 2  # the numbers, as numbers
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [row["class"] for row in parsed] == [csv_cell(name) for name in HOSTILE]
    assert parsed[7]["class"] == '\'=HYPERLINK("http://evil","x")'
    assert parsed[1]["class"] == "two\nlines"  # quoting keeps the newline inside its cell


def test_latex_escapes_specials() -> None:
    assert latex_cell("50% & $x_1$ {a} #2 ~^\\") == (
        r"50\% \& \$x\_1\$ \{a\} \#2 \textasciitilde{}\textasciicircum{}\textbackslash{}"
    )
    assert latex_table([{"class": "a&b"}]).count(r"a\&b") == 1


def test_frequency_table_is_escaped(tmp_path: Path) -> None:
    counts = {name: i for i, name in enumerate(HOSTILE)}
    write_frequency_table(counts, None, tmp_path / "t.md", tmp_path / "t.csv")
    assert_safe_markdown_table((tmp_path / "t.md").read_text(), len(HOSTILE), 3)
    assert formula_cells((tmp_path / "t.csv").read_text()) == []


NAMES = ["cat", "dog", "owl"]


def store_with_run(path: Path, model: str, hits: list[bool]) -> str:
    spec = {"model": model, "dataset": "d", "method": "generate", "setting": "open"}
    with RunStore(path) as store:
        store.start_run("run1", json.dumps(spec), NAMES, len(hits))
        store.add_predictions(
            "run1",
            [Prediction(f"e{i}", i % 3, text=NAMES[i % 3] if hit else "bird", hit=hit)
             for i, hit in enumerate(hits)],
        )  # fmt: skip
        store.finish_run("run1", "done", 1.0)
    return "run1"


def test_results_csv_neutralises_formula_cells(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    store_with_run(store, "=cmd|' /C calc'!A0", [True, False])
    result = CliRunner().invoke(app, ["results", "--store", str(store), "--format", "csv"])
    assert result.exit_code == 0, result.output
    (row,) = csv.DictReader(io.StringIO(result.stdout))
    assert row["model"] == "'=cmd|' /C calc'!A0"


def test_frequency_run_with_constant_accuracy_reports_undefined(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    store_with_run(store, "random:llava", [True] * 6)  # every class at accuracy 1.0
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a cat sat\na dog ran\nthe cat again\nan owl\n", encoding="utf-8")
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nowl\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["frequency", "--corpus", str(corpus), "--classes",
                                      str(classes), "--run", "run1", "--store", str(store),
                                      "--out", str(tmp_path / "freq")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Spearman undefined (constant data)" in result.stdout
    assert "Pearson (log 1+count) undefined (constant data)" in result.stdout
