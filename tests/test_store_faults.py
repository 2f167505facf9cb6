"""Store problems through the real CLI: one `error:` line naming the file and exit 2, never a
traceback; `results`/`export` read a store without writing it; a full disk or SIGTERM leaves the
run `interrupted` with every committed row."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_probe import rows_committed
from test_eval import make_image_folder
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.records import Prediction
from vlmclf.store import SCHEMA_VERSION, RunStore, StoreError, StoreMissingError

NAMES = ["cat", "dog"]


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def small_store(path: Path, n: int = 3) -> Path:
    with RunStore(path) as store:
        store.start_run("run1", '{"model": "m", "dataset": "d", "method": "clip"}', NAMES, n)
        store.add_predictions("run1", [Prediction(f"e{i}", i % 2, pred=0, hit=i % 2 == 0)
                                       for i in range(n)])  # fmt: skip
        store.finish_run("run1", "done", 1.0)
    return path


def commands_on(store: Path, tmp_path: Path) -> list[list[str]]:
    folder = make_image_folder(tmp_path / "imgs", per_class=1)
    return [
        ["results", "--store", str(store)],
        ["export", "run1", "--store", str(store), "--out-file", str(tmp_path / "o.jsonl")],
        ["eval", "--model", "random:clip", "--method", "clip", "--dataset", "imagefolder",
         "--data-root", str(folder), "--store", str(store), "--no-progress"],
        ["rematch", "run1", "--match", "strict", "--store", str(store), "--out",
         str(tmp_path / "rematch")],
    ]  # fmt: skip


def corrupt(path: Path) -> None:
    path.write_bytes(b"this is not a database at all\n" * 200)


def foreign(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (x)")
        conn.commit()


def newer(path: Path) -> None:
    small_store(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")


def dropped_table(path: Path) -> None:
    small_store(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TABLE predictions")
        conn.commit()


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (corrupt, "file is not a database"),
        (foreign, "SQLite file is not a vlmclf store"),
        (newer, f"schema version {SCHEMA_VERSION + 1} is newer"),
        (dropped_table, "damaged vlmclf store, table(s) predictions missing"),
    ],
)
def test_bad_store_is_one_line_and_exit_2_in_every_command(tmp_path: Path, damage, fragment):
    store = tmp_path / "runs.sqlite"
    damage(store)
    for command in commands_on(store, tmp_path):
        assert_one_line_error(cli(*command), str(store), fragment)


def test_results_and_export_never_create_a_store(tmp_path: Path) -> None:
    typo = tmp_path / "rnus.sqlite"
    assert_one_line_error(cli("results", "--store", str(typo)), str(typo))
    assert_one_line_error(cli("export", "abc", "--store", str(typo)), str(typo), "no vlmclf store")
    assert not typo.exists()
    with pytest.raises(StoreMissingError):
        RunStore(typo, read_only=True)


def test_read_only_open_writes_nothing(tmp_path: Path) -> None:
    store = small_store(tmp_path / "runs.sqlite")
    before = store.read_bytes()
    with RunStore(store, read_only=True) as runs:
        assert [r.run_id for r in runs.list_runs()] == ["run1"]
        with pytest.raises(StoreError, match="read-only"):
            runs.start_run("run2", "{}", NAMES, 1)
    assert store.read_bytes() == before


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path``; the test is skipped where mounting is not permitted."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_store_on_a_read_only_filesystem_can_be_listed_and_exported(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m") as mount:
        small_store(mount / "runs.sqlite")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        listed = cli("results", "--store", str(mount / "runs.sqlite"), "--format", "json")
        assert listed.exit_code == 0, listed.output
        assert '"run_id": "run1"' in listed.stdout
        out = tmp_path / "p.jsonl"
        exported = cli("export", "run1", "--store", str(mount / "runs.sqlite"), "--out-file",
                       str(out))
        assert exported.exit_code == 0, exported.output
        assert len(out.read_text().splitlines()) == 3
        folder = make_image_folder(tmp_path / "imgs", per_class=1)
        evaluated = cli("eval", "--model", "random:clip", "--method", "clip", "--dataset",
                        "imagefolder", "--data-root", str(folder), "--store",
                        str(mount / "runs.sqlite"), "--no-progress")  # fmt: skip
        assert_one_line_error(evaluated, "read-only")


def fill_disk(folder: Path, keep_bytes: int) -> None:
    """Write a filler file until the filesystem is full, then give back ``keep_bytes``."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - keep_bytes))


def test_full_disk_is_one_line_and_the_run_stays_resumable(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "imgs", per_class=12)
    with tmpfs(tmp_path / "small", "2m") as mount:
        store = mount / "runs.sqlite"
        args = ["eval", "--model", "random:clip", "--method", "clip", "--dataset", "imagefolder",
                "--data-root", str(folder), "--store", str(store), "--no-progress",
                "--batch-size", "1", "--workers", "1"]  # fmt: skip
        assert cli(*args, "--limit", "2").exit_code == 0
        fill_disk(mount, keep_bytes=96 * 1024)
        full = cli(*args)
        assert_one_line_error(full, str(store), "disk full", "re-run to resume")
        with RunStore(store, read_only=True) as runs:
            (record,) = runs.list_runs()
            stored = len(runs.predictions(record.run_id))
        assert record.status == "interrupted"
        assert 2 < stored < 48
        (mount / "filler").unlink()
        resumed = cli(*args, "--json")
        assert resumed.exit_code == 0, resumed.output
        with RunStore(store, read_only=True) as runs:
            assert runs.get_run(record.run_id).status == "done"
            assert len(runs.predictions(record.run_id)) == 48


def test_sigterm_marks_the_run_interrupted_and_keeps_committed_rows(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "imgs", per_class=12)
    store = tmp_path / "runs.sqlite"
    command = [sys.executable, "-m", "vlmclf.cli", "eval", "--model", "random:llava",
               "--method", "generate", "--max-new-tokens", "8", "--batch-size", "2",
               "--dataset", "imagefolder", "--data-root", str(folder), "--store", str(store),
               "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while rows_committed(store) < 4 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()
    assert "terminated (SIGTERM)" in stderr.decode() and "Traceback" not in stderr.decode()
    with RunStore(store, read_only=True) as runs:
        (record,) = runs.list_runs()
        assert record.status == "interrupted"
        assert 0 < len(runs.predictions(record.run_id)) < 48


def test_read_only_folder_with_a_pending_wal_is_refused_not_misread(tmp_path: Path) -> None:
    store = small_store(tmp_path / "runs.sqlite")
    with tmpfs(tmp_path / "ro", "1m") as mount, RunStore(store) as writer:
        writer.start_run("run2", "{}", NAMES, 1)  # committed to -wal, not yet checkpointed
        for name in ("runs.sqlite", "runs.sqlite-wal"):
            shutil.copy(tmp_path / name, mount / name)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        result = cli("results", "--store", str(mount / "runs.sqlite"))
        assert_one_line_error(result, "runs.sqlite-wal holds rows not yet in the main file")
