"""`vlmclf report`: the page's numbers against plain counts, escaping, selection, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from html_dom import Element, parse_html
from pydantic import BaseModel
from report_fixtures import (
    CLASS_NAMES,
    CLIP,
    EVIL_ANSWER,
    EVIL_MODEL,
    EVIL_PROMPT,
    GENERATION,
    IDENTITY,
    IMG_NAME,
    PIPE_NAME,
    SCRIPT_NAME,
    build_report_store,
    generation_preds,
)
from typer.testing import CliRunner

import vlmclf.analysis.views  # noqa: F401 - the analyses register their figures and tables
from vlmclf.cli import app
from vlmclf.metrics import summarize
from vlmclf.report import html as report_html
from vlmclf.report.html import protocol_label, render_report, setting_label
from vlmclf.report.html_figures import MAX_BARS, bars_to_draw
from vlmclf.store import RunStore


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Element]:
    path = tmp_path_factory.mktemp("report") / "runs.sqlite"
    ids = build_report_store(path)
    return path, ids, parse_html(render_report(path))


def table_rows(dom: Element) -> list[list[str]]:
    table = dom.find_id("table1")
    assert table is not None, "the page has no Table 1"
    return [[td.text() for td in tr.iter("td")] for tr in table.iter("tr")][1:]


def test_table1_cells_are_plain_counts_with_protocols(built) -> None:
    _, _, dom = built
    rows = table_rows(dom)
    generation = 100 * sum(hit for _, hit in GENERATION) / len(GENERATION)
    clip = 100 * sum(label == pred for label, pred in CLIP) / len(CLIP)
    assert [r[:3] for r in rows] == [
        [EVIL_MODEL, "generation, open world", "paper"],
        [EVIL_MODEL, "generation, closed world, K=2 (random order)", "paper"],
        ["random:clip", "CLIP zero-shot", report_html.default_protocol()],  # CLIP rows last
    ]
    assert rows[0][3].startswith(f"{generation:.1f} [") and rows[0][4] == ""
    assert rows[2][3].startswith(f"{clip:.1f} [") and "(provisional)" in rows[2][3]
    assert "provisional" not in rows[0][3]
    # started, never finished, and its store closed: nobody holds it, so it is interrupted
    assert rows[1][4].startswith("100.0") and "(interrupted)" in rows[1][4]
    headers = [th.text() for th in dom.find_id("table1").iter("th")]
    assert headers[3:] == ["toy", "toy2:test"]


def test_per_class_view_matches_plain_counts(built) -> None:
    _, ids, dom = built
    section = dom.find_id(f"run-{ids['generation']}")
    table = next(t for t in section.iter("table") if t.attrs.get("class") == "per-class")
    shown = {tr.iter("td").__next__().text(): [td.text() for td in tr.iter("td")]
             for tr in list(table.iter("tr"))[1:]}  # fmt: skip
    for label, name in enumerate(CLASS_NAMES):
        hits = [hit for lab, hit in GENERATION if lab == label]
        assert shown[name][1] == str(len(hits))
        assert shown[name][3] == f"{100 * sum(hits) / len(hits):.1f}"
    assert shown[IMG_NAME][2] == "1"  # the failed example counts apart
    assert EVIL_ANSWER in shown[SCRIPT_NAME][4]  # the wrong answer, as text


def test_per_class_comparison_has_a_column_per_run_of_the_dataset(built) -> None:
    _, ids, dom = built
    tables = [t for t in dom.iter("table") if t.attrs.get("class") == "per-class-comparison"]
    assert len(tables) == 2  # toy (generation, CLIP) and toy2:test
    links = [a.attrs["href"] for a in tables[0].iter("a")]
    assert links == [f"#run-{ids['generation']}", f"#run-{ids['clip']}"]
    rows = {r[0]: r[1:] for r in ([td.text() for td in tr.iter("td")]
                                  for tr in list(tables[0].iter("tr"))[1:])}  # fmt: skip
    for label, name in enumerate(CLASS_NAMES):
        hits = [hit for lab, hit in GENERATION if lab == label]
        right = [lab == pred for lab, pred in CLIP if lab == label]
        assert rows[name] == [f"{100 * sum(hits) / len(hits):.1f}",
                              f"{100 * sum(right) / len(right):.1f}"]  # fmt: skip


def test_injected_markup_stays_text(built) -> None:
    _, _, dom = built
    assert list(dom.iter("script")) == []
    assert [e.tag for e in dom.iter() if e.tag in ("b", "i")] == []
    for element in dom.iter():
        assert not [a for a in element.attrs if a.startswith("on")], element
    for img in dom.iter("img"):
        assert img.attrs["src"].startswith("data:image/png;base64,")
    text = dom.text()
    for injected in (SCRIPT_NAME, IMG_NAME, PIPE_NAME, EVIL_ANSWER, EVIL_MODEL):
        assert injected in text
    assert json.dumps(EVIL_PROMPT)[1:-1] in text  # inside the meta's JSON


def test_page_is_self_contained(built) -> None:
    _, _, dom = built
    csp = next(m for m in dom.iter("meta") if m.attrs.get("http-equiv"))
    assert "default-src 'none'" in csp.attrs["content"]
    for element in dom.iter():
        for name in ("src", "href"):
            value = element.attrs.get(name)
            assert value is None or value.startswith(("data:", "#")), (element.tag, value[:40])
    assert list(dom.iter("link")) == []


def test_run_identity_shows_spec_and_meta_but_not_summary(built) -> None:
    _, ids, dom = built
    section = dom.find_id(f"run-{ids['generation']}")
    blocks = {d.iter("summary").__next__().text(): d for d in section.iter("details")}
    meta = json.loads(blocks["run record meta"].iter("pre").__next__().text())
    assert meta == {"resolved_prompt": EVIL_PROMPT, "data_fingerprint": "sha256:abc123"}
    spec = json.loads(blocks["stored spec"].iter("pre").__next__().text())
    assert spec["model"] == EVIL_MODEL and spec["protocol"] == "paper"
    identity = blocks["run identity (what the run id hashes)"].iter("pre").__next__().text()
    assert json.loads(identity) == IDENTITY
    first = next(section.iter("table"))
    cells = zip(first.iter("th"), first.iter("td"), strict=True)
    headline = {th.text(): td.text() for th, td in cells}
    ci = summarize(generation_preds(), CLASS_NAMES)["ci95"]
    assert headline["ci95"] == f"[{ci[0]:.3f}, {ci[1]:.3f}]"
    notes = [p.text() for p in section.iter("p") if p.attrs.get("class") == "note"]
    assert notes == [summarize(generation_preds(), CLASS_NAMES)["denominator"]]


def test_analyses_are_drawn_and_unknown_kinds_listed(built) -> None:
    _, _, dom = built
    sections = [s for s in dom.iter("section") if s.attrs.get("class") == "analysis"]
    kinds = [s.iter("h3").__next__().text().split()[0] for s in sections]
    assert kinds == ["sweep", "frequency", "mystery"]
    images = [len(list(s.iter("img"))) for s in sections]
    assert images == [2, 1, 0]  # accuracy and relative error vs K; frequency; none
    assert SCRIPT_NAME in sections[2].text()


def test_runs_selects_runs_and_the_analyses_naming_them(built) -> None:
    path, ids, _ = built
    dom = parse_html(render_report(path, [ids["clip"][:6]]))
    assert [r[0] for r in table_rows(dom)] == ["random:clip"]
    kinds = [s.iter("h3").__next__().text().split()[0]
             for s in dom.iter("section") if s.attrs.get("class") == "analysis"]  # fmt: skip
    assert kinds == ["frequency"]  # its spec names the run by an 8-character prefix


def test_an_unreadable_analysis_costs_its_figure_only(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as store:
        store.save_analysis("sweep", {"x": 1}, {"rows": [{"model": "m"}]})
    dom = parse_html(render_report(path))
    warn = [p.text() for p in dom.iter("p") if p.attrs.get("class") == "warn"]
    assert len(warn) == 1 and warn[0].startswith("figure not drawn: KeyError")


def probe_block(acc: float) -> dict:
    def protocol(a: float, epoch: int) -> dict:
        return {"accuracy": a, "ci95": [a - 0.05, a + 0.05],
                "chosen": {"epoch": epoch, "weight_decay": 1e-4}}  # fmt: skip

    return {"dim": 8, "n_train": 40, "n_eval": 20,
            "protocols": {"paper": protocol(acc, 9), "clean": protocol(acc - 0.1, 4)}}  # fmt: skip


def test_probe_and_rematch_analyses_are_drawn_with_their_tables(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    probe = {"model": EVIL_MODEL, "dataset": "toy", "layer": -1, "head": "linear",
             "train_split": "train", "eval_split": "test",
             "features": {"last_token": probe_block(0.8), "mean": probe_block(0.7)}}  # fmt: skip
    metrics = {"accuracy": 0.5, "strict_accuracy": 0.4, "macro_precision": 0.3,
               "macro_recall": 0.2, "macro_f1": 0.1}  # fmt: skip
    rematch = {"rows": [{"match": m, "run_id": "r", "n": 4, **metrics} for m in ("contain", "nli")]}
    with RunStore(path) as store:
        store.save_analysis("probe", {"p": 1}, probe)
        store.save_analysis("rematch", {"r": 1}, rematch)
    dom = parse_html(render_report(path))
    sections = [s for s in dom.iter("section") if s.attrs.get("class") == "analysis"]
    assert [len(list(s.iter("img"))) for s in sections] == [1, 1]
    probe_cells = [td.text() for td in next(sections[0].iter("table")).iter("td")]
    assert probe_cells[:3] == [EVIL_MODEL, "last token probing", "80.0 [75.0, 85.0]"]
    assert [p for p in dom.iter("p") if p.attrs.get("class") == "warn"] == []


def test_report_command(built, tmp_path: Path) -> None:
    path, ids, _ = built
    out = tmp_path / "sub" / "report.html"
    args = ["report", "--store", str(path), "--out-file", str(out)]
    result = CliRunner().invoke(app, [*args, "--runs", ids["other"][:5], "--runs", ids["other"]])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out} (")
    assert len(table_rows(parse_html(out.read_text()))) == 1  # one run named twice
    bad = CliRunner().invoke(app, ["report", "--store", str(path), "--runs", "zzzz"])
    assert bad.exit_code == 2 and "no run id starts with 'zzzz'" in bad.output
    missing = CliRunner().invoke(app, ["report", "--store", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 2 and "--store: no store at" in missing.output
    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("hello")
    foreign = CliRunner().invoke(app, ["report", "--store", str(not_a_store)])
    assert foreign.exit_code == 2 and f"error: {not_a_store}: " in foreign.output


def test_a_spec_without_protocol_has_runspecs_default(monkeypatch: pytest.MonkeyPatch) -> None:
    class WithProtocol(BaseModel):
        protocol: str = "thesis"

    class WithoutProtocol(BaseModel):
        model: str = "m"

    monkeypatch.setattr(report_html, "RunSpec", WithProtocol)
    assert protocol_label({}) == "thesis" and protocol_label({"protocol": "paper"}) == "paper"
    monkeypatch.setattr(report_html, "RunSpec", WithoutProtocol)
    assert protocol_label({}) == "clean"


def test_labels_of_runs() -> None:
    spec = {"method": "likelihood", "options": {"cfg": 1.5}, "prompt": "alt1", "cot": True}
    assert setting_label(spec) == "likelihood, open world, prompt=alt1, CoT, cfg=1.5"


def test_many_classes_draw_the_worst_and_best_bars() -> None:
    per_class = {f"c{i:02d}": (i * 37 % 50) / 50 for i in range(50)}
    shown, truncated = bars_to_draw(per_class)
    ranked = sorted(per_class.items(), key=lambda kv: (kv[1], kv[0]))
    assert truncated and shown == ranked[: MAX_BARS // 2] + ranked[-MAX_BARS // 2 :]
    assert bars_to_draw({"a": 1.0, "b": 0.0}) == ([("b", 0.0), ("a", 1.0)], False)
