"""`vlmclf demo` on a tiny subset: every part runs, the findings are filled honestly, the page is
written; and the label-set re-scoring equals a real `--k` run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.organism.load import GRID
from vlmclf.store import RunStore

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").exists(), reason="Debian's dataset-fashion-mnist"
)


def test_demo_on_a_tiny_subset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_threads_restored: None
):
    monkeypatch.chdir(tmp_path)
    args = [
        "demo", "--n-clip", "24", "--n-vlm", "10", "--n-probe-train", "40", "--batch-size", "10",
        "--no-progress", "--json", "--threads", "2",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    demo = json.loads(result.stdout.strip().splitlines()[-1])

    rows = {row["method"]: row for row in demo["accuracies"]}
    assert next(iter(rows)) == "zero-shot CLIP" and len(demo["accuracies"]) == 12
    assert [row["n"] for row in demo["accuracies"][:11]] == [24] + [10] * 10
    grid = {f"organism:{name}" for name in GRID} - {"organism:grid-lite0-smollm2"}  # = vlm-uniform
    assert {row["model"] for row in demo["accuracies"]} == {
        "organism:clip", "organism:vlm", "organism:vlm-finetuned", "organism:vlm-uniform",
        "organism:vlm-reversed", *grid,
    }  # fmt: skip
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in demo["accuracies"])
    assert "The photo features a" in demo["accuracies"][2]["method"]  # the paper's answer prefix

    findings = {f["id"]: f for f in demo["findings"]}
    assert list(findings) == ["1a", "1b", "2", "3", "4", "5", "6"]
    assert all(isinstance(f["verdict"], str) and f["verdict"] for f in findings.values())
    assert [c["n"] for c in findings["1a"]["details"]] == [10, 10, 10]  # paired on the same images
    assert [row["k"] for row in findings["4"]["details"]["curve"]] == [2, 3, 5, 7, 10]
    assert len(demo["likelihood"]["cfg_t_per_fold"]) == 2
    assert findings["6"]["details"]["n"]["tops"] + findings["6"]["details"]["n"]["rest"] == 10

    with RunStore(tmp_path / "vlmclf-runs.sqlite", read_only=True) as store:  # --threads, recorded
        assert {store.get_run(run_id).threads for run_id in demo["runs"].values()} == {2}

    files = demo["files"]
    assert "## Findings" in Path(files["report"]).read_text()
    for figure in ("label_set_size", "frequency_intervention", "encoder_vs_llm"):
        assert Path(files[figure]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = Path(files["html"]).read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert "<h3>demo " in page and "<h3>probe " in page  # the demo's analyses, nothing else
    assert page.count('alt="demo figure"') == 3
    assert "finding of the paper" in page  # the findings table of the stored demo analysis

    lines = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert lines[0].startswith("[1/11] organism:clip: zero-shot on 24 test images (at ")
    assert lines[0].endswith("time left: estimated after the first step)")
    assert all(" left)" in line for line in lines[1:11]) and lines[-1].startswith("[done] 11 steps")


def test_quick_takes_the_quick_sizes_and_explicit_sizes_win(monkeypatch: pytest.MonkeyPatch):
    from vlmclf.analysis.demo import run as demo_run

    asked = []

    def fake_run_demo(sizes, *args, **kwargs):
        asked.append(sizes)
        raise SystemExit(0)

    monkeypatch.setattr(demo_run, "run_demo", fake_run_demo)
    CliRunner().invoke(app, ["demo", "--quick"])
    CliRunner().invoke(app, ["demo", "--quick", "--n-vlm", "7"])
    CliRunner().invoke(app, ["demo"])
    quick = demo_run.QUICK_SIZES
    assert asked == [quick, demo_run.DemoSizes(quick.n_clip, 7, quick.n_probe_train),
                     demo_run.DemoSizes()]  # fmt: skip
    assert quick.n_clip < 500 and quick.n_vlm < 200 and quick.n_probe_train < 1000


def test_the_progress_line_estimates_the_time_left_from_measured_steps():
    from vlmclf.analysis.demo.progress import PlannedStep, StepClock

    now = [100.0]
    lines: list[str] = []
    plan = [PlannedStep("a", "clip", 100), PlannedStep("b", "generate", 20),
            PlannedStep("c", "clip", 50)]  # fmt: skip  (costs 100, 100, 50)
    clock = StepClock(plan, lines.append, clock=lambda: now[0])
    clock.start_next()
    now[0] += 40  # step a: 100 units in 40 s
    clock.start_next()
    now[0] += 80  # step b: 100 units in 80 s -> 200 units in 120 s
    clock.start_next()
    now[0] += 5
    assert clock.finish() == 125
    assert lines == [
        "[1/3] a (at 0 s; time left: estimated after the first step)",
        "[2/3] b (at 40 s; about 60 s left)",  # 40 s / 100 units x 150 units
        "[3/3] c (at 120 s; about 30 s left)",  # 120 s / 200 units x 50 units
        "[done] 3 steps in 125 s",
    ]


def test_label_set_restriction_equals_a_real_k_run(tmp_path: Path):
    """Re-deciding a stored all-class CLIP run among K offered classes gives what `--k K`
    computes from scratch (same offered classes, same predictions)."""
    from vlmclf.analysis.demo.rescoring import restrict_to_k
    from vlmclf.methods import make_method
    from vlmclf.run.runner import RunConfig, run
    from vlmclf.spec import RunSpec

    config = RunConfig(store_path=tmp_path / "runs.sqlite", limit=12, batch_size=12,
                       progress=False)  # fmt: skip
    spec = RunSpec(model="organism:clip", dataset="fashion_mnist", method="clip")
    everything = run(spec, config, make_method)
    for k in (2, 5):
        real = run(spec.model_copy(update={"k": k}), config, make_method)
        derived = restrict_to_k(everything.predictions, everything.class_names, k)
        by_id = {p.example_id: p for p in derived}
        for p in real.predictions:
            assert sorted(p.choices) == by_id[p.example_id].choices
            assert (p.pred, p.hit) == (by_id[p.example_id].pred, by_id[p.example_id].hit)
