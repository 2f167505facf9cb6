"""`vlmclf demo` on a tiny subset: every part runs and the findings table is filled honestly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmclf.cli import app

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").exists(), reason="Debian's dataset-fashion-mnist"
)


def test_demo_on_a_tiny_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "demo",
        "--n-clip",
        "24",
        "--n-vlm",
        "12",
        "--n-probe-train",
        "40",
        "--batch-size",
        "12",
        "--no-progress",
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    demo = json.loads(result.stdout.strip().splitlines()[-1])

    methods = [row["method"] for row in demo["accuracies"]]
    assert methods[0] == "zero-shot CLIP" and len(methods) == 6
    assert [row["n"] for row in demo["accuracies"][:4]] == [24, 12, 12, 12]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in demo["accuracies"])

    verdicts = [finding["verdict"] for finding in demo["findings"]]
    assert len(verdicts) == 3 and all(isinstance(v, str) and v for v in verdicts)
    comparisons = demo["findings"][0]["details"]
    assert [c["n"] for c in comparisons] == [12, 12, 12]  # paired on the same images
    assert 3 <= demo["findings"][2]["details"]["n_classes"] <= 10  # classes seen in 12 images

    report = Path(demo["files"]["report"])
    assert "## Findings" in report.read_text()
    assert Path(demo["files"]["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
