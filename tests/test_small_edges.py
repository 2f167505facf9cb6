"""The smaller production edges of issue 21 (item 7): a huge manifest line is refused after
reading at most the cap, a deeply nested JSON body is a 400, a key is masked in its obvious
encodings too, and `export --out-file -` writes to standard output."""

from __future__ import annotations

import base64
import io
import json
import logging
import tracemalloc
import urllib.parse
from pathlib import Path

import pytest
from api_servers import FakeApiServer, fast_settings, make_images, status
from test_serve_hardening import SlowModel, exchange, post
from test_store_faults import small_store
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.data import load_dataset
from vlmclf.data.readers import MAX_MANIFEST_LINE_BYTES
from vlmclf.models.api import ApiFailure, load_api_model
from vlmclf.models.api.keys import redact, register_secret
from vlmclf.serve import ChatModelServer, ServeLimits

LONG_KEY = "sk-proj-Zq81TtbYp0CkW7uvN3sD4xLmR9eHfGa2"


def test_a_huge_manifest_line_is_refused_naming_it_without_reading_it_whole(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "m.jsonl"
    with manifest.open("w") as f:
        f.write(json.dumps({"image": "a.png", "label": "cat"}) + "\n")
        f.write('{"image": "' + "x" * (40 * MAX_MANIFEST_LINE_BYTES) + '", "label": "dog"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"m\.jsonl line 2: longer than 1024 KiB") as err:
            load_dataset(str(manifest))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MAX_MANIFEST_LINE_BYTES, peak  # not the 40 MiB line, nor copies of it
    assert "\n" not in str(err.value)


def test_a_deeply_nested_json_body_is_a_400_not_a_500(caplog) -> None:
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    server = ChatModelServer(SlowModel(0.0), "slow", port=0, limits=ServeLimits())
    server.start_in_thread()
    try:
        with caplog.at_level(logging.ERROR, "vlmclf.serve"):
            code, reply = exchange(server, post("/v1/chat/completions", deep))
    finally:
        server.shutdown()
    assert code == 400 and "nested too deeply" in reply["error"]["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback logged


def _encodings(key: str) -> list[str]:
    raw = key.encode()
    return [
        base64.b64encode(raw).decode(),
        base64.b64encode(b"Authorization: Bearer " + raw).decode(),  # key at any byte offset
        base64.b64encode(b"x" + raw + b"y").decode(),
        base64.urlsafe_b64encode(b"ab" + raw).decode(),
        urllib.parse.quote(key + "/" + key, safe=""),
        raw.hex(),
        f"invalid key {key[:18]}... (truncated)",
    ]


def test_key_redaction_masks_base64_url_hex_and_long_prefixes() -> None:
    register_secret(LONG_KEY)
    for text in _encodings(LONG_KEY):
        masked = redact(text)
        assert "***" in masked, text
        for fragment in (LONG_KEY[:12], base64.b64encode(LONG_KEY.encode()).decode()[4:20]):
            assert fragment not in masked, (text, masked)
    ordinary = "sk-proj is a prefix; Zq81 too; aGVsbG8gd29ybGQ= is hello world"
    assert redact(ordinary) == ordinary


def test_a_server_echoing_the_key_base64_encoded_leaks_nothing(tmp_path: Path, monkeypatch,
                                                               caplog) -> None:  # fmt: skip
    monkeypatch.setenv("OPENAI_API_KEY", LONG_KEY)
    leak = base64.b64encode(f"Bearer {LONG_KEY}".encode()).decode()
    body = json.dumps({"error": {"message": f"bad request from {leak}"}}).encode()
    with FakeApiServer("openai", key=None, plan=lambda _i, _p: status(400, body=body)) as srv:
        model = load_api_model("openai:test-model", **fast_settings(srv, tmp_path / "c.sqlite"))
        with caplog.at_level(logging.DEBUG, "vlmclf.api"):
            (out,) = model.generate(make_images(1), ["q"], 5)
    assert isinstance(out, ApiFailure)
    shown = str(out) + "\n".join(r.getMessage() for r in caplog.records)
    assert "***" in str(out) and leak not in shown
    assert not [e for e in _encodings(LONG_KEY) if e in shown]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_out_dash_writes_to_standard_output(tmp_path: Path, monkeypatch, fmt) -> None:
    store = small_store(tmp_path / "runs.sqlite", n=3)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["export", "run1", "--store", str(store), "--out-file", "-",
                                      "--format", fmt])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "-").exists()
    assert "wrote 3 predictions to standard output" in result.stderr
    if fmt == "jsonl":
        rows = [json.loads(line) for line in result.stdout.splitlines()]
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(io.BytesIO(result.stdout_bytes)).to_pylist()
    assert [r["example_id"] for r in rows] == ["e0", "e1", "e2"]
    assert {r["run_id"] for r in rows} == {"run1"}
