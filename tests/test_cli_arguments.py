"""Bad numbers are refused at the command line, naming the option and the accepted range, with
exit 2 before any model loads; the reproduced failures were silent (exit 0) or tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_eval import make_image_folder
from typer.testing import CliRunner

from vlmclf.cli import app

EVAL = ["eval", "--model", "random:clip", "--method", "clip", "--dataset", "x.jsonl"]
LIKELIHOOD = ["eval", "--model", "random:llava", "--method", "likelihood", "--dataset", "x.jsonl"]

CASES = [
    (EVAL + ["--limit", "-9990"], "'--limit': must be >= 1, got -9990"),
    (EVAL + ["--limit", "0"], "'--limit': must be >= 1, got 0"),
    (EVAL + ["--batch-size", "-3"], "'--batch-size': must be >= 1, got -3"),
    (EVAL + ["--batch-size", "0"], "'--batch-size': must be >= 1, got 0"),
    (EVAL + ["--workers", "0"], "'--workers': must be >= 1, got 0"),
    (EVAL + ["--seed", "-1"], "'--seed': must be in [0, 4294967295], got -1"),
    (EVAL + ["--concurrency", "0"], "'--concurrency': must be >= 1, got 0"),
    (EVAL + ["--max-requests", "0"], "'--max-requests': must be >= 1, got 0"),
    (EVAL + ["--max-cost", "0"], "'--max-cost': must be > 0, got 0.0"),
    (EVAL + ["--max-cost", "nan"], "'--max-cost': must be > 0, got nan"),
    (EVAL + ["--image-max-side", "-5"], "'--image-max-side': must be >= 1, got -5"),
    (EVAL + ["--max-new-tokens", "0"], "'--max-new-tokens': must be >= 1, got 0"),
    (EVAL + ["--val-limit", "0"], "'--val-limit': must be >= 1, got 0"),
    (LIKELIHOOD + ["--cfg", "nan"], "'--cfg': must be a finite number, got nan"),
    (LIKELIHOOD + ["--cfg", "inf"], "'--cfg': must be a finite number, got inf"),
    (["sweep", "--model", "random:llava", "--dataset", "x.jsonl", "--batch-size", "0"],
     "'--batch-size': must be >= 1, got 0"),
    (["sweep", "--model", "random:llava", "--dataset", "x.jsonl", "--limit", "-1"],
     "'--limit': must be >= 1, got -1"),
    (["probe", "--model", "random:llava", "--dataset", "x.jsonl", "--lr", "0"],
     "'--lr': must be > 0, got 0.0"),
    (["probe", "--model", "random:llava", "--dataset", "x.jsonl", "--epochs", "0"],
     "'--epochs': must be >= 1, got 0"),
    (["probe", "--model", "random:llava", "--dataset", "x.jsonl", "--val-fraction", "1.5"],
     "'--val-fraction': must be in (0, 1], got 1.5"),
    (["probe", "--model", "random:llava", "--dataset", "x.jsonl", "--train-limit", "0"],
     "'--train-limit': must be >= 1, got 0"),
    (["finetune", "--model", "random:llava", "--dataset", "x.jsonl", "--warmup-ratio", "2"],
     "'--warmup-ratio': must be in [0, 1], got 2.0"),
    (["finetune", "--model", "random:llava", "--dataset", "x.jsonl", "--lr-lora", "nan"],
     "'--lr-lora': must be >= 0, got nan"),
    (["finetune", "--model", "random:llava", "--dataset", "x.jsonl", "--batch-size", "0"],
     "'--batch-size': must be >= 1, got 0"),
    (["finetune", "--model", "random:llava", "--dataset", "x.jsonl", "--step-batch-size", "0"],
     "'--step-batch-size': must be >= 1, got 0"),
    (["finetune", "--model", "random:llava", "--dataset", "x.jsonl", "--epochs", "0"],
     "'--epochs': must be > 0, got 0.0"),
    (["wikiqa", "--model", "random:llava", "--batch-size", "0"],
     "'--batch-size': must be >= 1, got 0"),
    (["wikiqa", "build", "--model", "random:llava", "--per-class", "0"],
     "'--per-class': must be >= 1, got 0"),
    (["serve", "--model", "random:llava", "--port", "70000"],
     "'--port': must be in [0, 65535], got 70000"),
    (["organism", "train", "vlm", "--out", "x", "--steps", "0"], "'--steps': must be >= 1, got 0"),
    (["demo", "--n-clip", "0"], "'--n-clip': must be >= 1, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"), CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CASES]
)
def test_bad_number_names_the_option_and_the_range(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def eval_args(folder: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["eval", "--model", "random:clip", "--method", "clip", "--dataset", "imagefolder",
            "--data-root", str(folder), "--store", str(tmp_path / "s.sqlite"), "--no-progress",
            *extra]  # fmt: skip


def test_k_larger_than_the_class_count_is_refused(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "imgs", per_class=1)
    result = CliRunner().invoke(app, eval_args(folder, tmp_path, "--k", "50"))
    assert result.exit_code == 2, result.output
    assert "--k must be in [2, 4] (the dataset's distinct class names), got 50" in result.stderr
    assert not (tmp_path / "s.sqlite").exists()  # refused before a run was recorded


def test_template_with_two_slots_names_the_file(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "imgs", per_class=1)
    templates = tmp_path / "t.json"
    templates.write_text(json.dumps(["a {} next to a {}."]))
    result = CliRunner().invoke(app, eval_args(folder, tmp_path, "--templates", str(templates)))
    assert result.exit_code == 2, result.output
    assert f"error: --templates {templates}: template 0" in result.stderr
    assert "exactly one '{}'" in result.stderr and "Traceback" not in result.output


def test_near_duplicate_labels_are_a_plain_warning_line(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "imgs", per_class=1)
    (folder / "Tabby  Cat").mkdir()
    (folder / "tabby cat" / "000.jpg").rename(folder / "Tabby  Cat" / "000.jpg")
    (folder / "tabby cat" / "000.jpg").write_bytes((folder / "Tabby  Cat" / "000.jpg").read_bytes())
    result = CliRunner().invoke(app, eval_args(folder, tmp_path, "--json"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1
    assert "'Tabby  Cat' ~ 'tabby cat' (case or spacing)" in warnings[0]
