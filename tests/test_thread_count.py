"""Data-parallel runs are bit-identical to one process only at equal CPU thread counts (issue
25, item 10): the thread count is recorded beside each run, and a run resumed under another
one is named in the environment-change warning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_identity import ColourMethod, clip_spec, colour_run, config_for, write_manifest

from vlmclf.run.identity import environment_changes, environment_facts
from vlmclf.run.runner import run
from vlmclf.store import RunStore


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    colours = {"a.png": (200, 10, 10), "b.png": (10, 10, 200)}
    return write_manifest(tmp_path / "data", {"a.png": "cat", "b.png": "dog"}, colours)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_resume_under_another_thread_count_is_named(manifest, tmp_path, threads):
    torch.set_num_threads(2)
    calls: list[int] = []
    first = colour_run(clip_spec(manifest), config_for(tmp_path), calls)
    with RunStore(tmp_path / "runs.sqlite") as store:
        assert store.get_run(first.run_id).meta["environment"]["torch_threads"] == "2"
    torch.set_num_threads(1)
    warnings: list[str] = []
    run(clip_spec(manifest), config_for(tmp_path), lambda m, c, s: ColourMethod(c, calls),
        on_warning=warnings.append, load_model=lambda *_: object())  # fmt: skip
    assert len(warnings) == 1
    assert "torch_threads 2 -> 1 (CPU scores can move by ~1e-6 with the thread count)" in (
        warnings[0]
    )


def test_a_run_stored_before_threads_were_recorded_is_no_change():
    now = environment_facts("cpu")
    before = {k: v for k, v in now.items() if k != "torch_threads"}
    assert environment_changes(before, now) == []
    assert environment_changes({**now, "torch_threads": "8"}, now) == [
        f"torch_threads 8 -> {now['torch_threads']} "
        "(CPU scores can move by ~1e-6 with the thread count)"
    ]
