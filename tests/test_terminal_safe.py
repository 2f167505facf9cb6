"""No raw terminal escapes (issue 21, item 3): text from outside (a server's error body, a class
name, a manifest field) is made safe by one helper before any command prints it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from api_servers import FakeApiServer, status
from test_eval import make_image_folder
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.spec import RunSpec
from vlmclf.store import RunStore
from vlmclf.terminal import terminal_safe

HOSTILE = "\x1b[2J\x1b]0;PWNED\x07"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def _no_raw_escapes(text: str) -> None:
    assert not [c for c in RAW if c in text], repr(text)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (HOSTILE, "\\x1b[2J\\x1b]0;PWNED\\x07"),
        ("csi\x9b31m c1", "csi\\x9b31m c1"),
        ("back\x08space\rreturn\x7f", "back\\x08space\\x0dreturn\\x7f"),
        ("gpj.\u202eexe", "gpj.\\u202eexe"),
        ("tabby\tcat\nline two", "tabby\tcat\nline two"),
        ("café 中文 ü", "café 中文 ü"),
    ],
)
def test_terminal_safe_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert terminal_safe(raw) == shown
    _no_raw_escapes(terminal_safe(raw))
    assert terminal_safe("a\nb\tc", one_line=True) == "a\\x0ab\\x09c"


def test_eval_prints_a_hostile_server_body_escaped(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images", per_class=1)
    body = json.dumps({"error": {"message": f"bad image {HOSTILE}"}}).encode()
    with FakeApiServer("openai", plan=lambda _i, _p: status(400, body=body)) as server:
        command = [sys.executable, "-m", "vlmclf.cli", "eval", "--model", "openai:test-model",
                   "--base-url", server.base_url, "--dataset", "imagefolder", "--data-root",
                   str(root), "--method", "generate", "--store", str(tmp_path / "s.sqlite"),
                   "--no-progress", "--concurrency", "1"]  # fmt: skip
        env = {**os.environ, "OPENAI_API_KEY": "test-key",
               "VLMCLF_API_CACHE": str(tmp_path / "cache.sqlite")}  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert "PWNED" in done.stderr  # the server's text is shown ...
    assert "\\x1b]0;PWNED\\x07" in done.stderr  # ... as text
    _no_raw_escapes(done.stdout + done.stderr)


def test_frequency_and_results_print_hostile_class_and_model_names_escaped(
    tmp_path: Path,
) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text(f"goldfish\nevil{HOSTILE}fish\n")
    corpus = tmp_path / "c.txt"
    corpus.write_text(f"a goldfish\nan evil{HOSTILE}fish here\n")
    store = tmp_path / "s.sqlite"
    result = CliRunner().invoke(app, ["frequency", "--corpus", str(corpus), "--classes",
                                      str(classes), "--out", str(tmp_path / "out"), "--store",
                                      str(store)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "goldfish (1)" in result.stdout
    _no_raw_escapes(result.stdout + result.stderr)

    with RunStore(store) as runs:
        spec = RunSpec(model=f"random:{HOSTILE}", dataset=HOSTILE, method="clip")
        runs.start_run("r", spec.canonical_json(), ["a"], 1)
        runs.finish_run("r", "done", 1.0)
    listed = CliRunner().invoke(app, ["results", "--store", str(store)])
    assert listed.exit_code == 0, listed.output
    assert "\\x1b[2J" in listed.stdout
    _no_raw_escapes(listed.stdout)


def test_an_error_line_quoting_a_file_field_stays_one_escaped_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": f"x{HOSTILE}\nforged line.jpg", "label": 3}) + "\n")
    result = CliRunner().invoke(app, ["eval", "--model", "random:clip", "--method", "clip",
                                      "--dataset", str(manifest), "--store",
                                      str(tmp_path / "s.sqlite"), "--no-progress"])  # fmt: skip
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    _no_raw_escapes(result.stderr)
