"""Resumable feature caches: a killed extraction restarts from its finished chunks, extracts only
the missing examples, and ends with the file an uninterrupted extraction writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures_data import write_noisy_colour_folder

from vlmclf.analysis.probe.chunks import HOLD_ENV, partial_folder, plan_chunks
from vlmclf.analysis.probe.features import cached_features, extract_features, load_feature_file
from vlmclf.analysis.probe.run import ProbeConfig, ProbeRequest, ProbeRuntime, run_probe
from vlmclf.data import load_dataset
from vlmclf.run.loading import ModelOptions, load_any_model

QUESTION = "What type of object is in this photo?"
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


class CountingImages:
    """Wraps a VLM and counts the images sent through ``hidden_features``; optionally fails on
    the call after ``fail_after`` calls (a crash in the middle of an extraction)."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner = inner
        self.name = inner.name
        self.images = 0
        self.calls = 0
        self.fail_after = fail_after

    def hidden_features(self, images, questions, layer=-1):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.images += len(images)
        return self.inner.hidden_features(images, questions, layer)


@pytest.fixture(scope="module")
def llava():
    return load_any_model("random:llava", ModelOptions())  # as `vlmclf probe` loads it


def _final_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*.safetensors") if not p.parent.name.endswith(".partial"))


def _wait_for(condition, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the extraction's chunks")
        time.sleep(0.05)


def test_sigkilled_probe_resumes_with_only_the_missing_examples(tmp_path, llava):
    train = write_noisy_colour_folder(tmp_path / "train", per_class=5, seed=1, noise=45)
    (train / "blue" / "0broken.png").write_bytes(b"not a png")  # index 1: in a finished chunk
    test = write_noisy_colour_folder(tmp_path / "test", per_class=2, seed=2, noise=45)
    cache = tmp_path / "cache"
    argv = [sys.executable, "-m", "vlmclf.cli", "probe", "--model", "random:llava",
            "--dataset", "imagefolder", "--eval-split", "test", "--data-root", str(test),
            "--train-data-root", str(train), "--epochs", "2", "--feature-chunk", "4",
            "--batch-size", "2", "--workers", "1", "--cache-dir", str(cache),
            "--store", str(tmp_path / "killed.sqlite"), "--out", str(tmp_path / "killed"),
            "--json", "--no-progress"]  # fmt: skip
    env = {**os.environ, HOLD_ENV: "2", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    chunks = lambda: list(cache.rglob("chunk-*.safetensors"))  # noqa: E731
    try:
        _wait_for(lambda: len(chunks()) == 2 or child.poll() is not None)
    finally:
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, stderr
    assert len(chunks()) == 2 and _final_files(cache) == []

    request = ProbeRequest(model="random:llava", dataset="imagefolder", eval_split="test",
                           data_root=str(test), train_data_root=str(train),
                           config=ProbeConfig(epochs=2))  # fmt: skip
    counting = CountingImages(llava)
    resumed = run_probe(request, _runtime(tmp_path / "resumed", cache), lambda spec: counting)
    n_train, n_test = 16, 6
    # only the examples of the two missing train chunks and the whole eval split went through
    assert resumed.result["n_extracted"] == {"train": n_train - 8, "eval": n_test}
    assert counting.images == (n_train - 8) + n_test
    assert resumed.result["n_failed"] == {"train": 1, "eval": 0}  # kept from a disk chunk
    assert not any(p.name.endswith(".partial") for p in cache.rglob("*"))

    reference = run_probe(request, _runtime(tmp_path / "whole", tmp_path / "cache2"),
                          lambda spec: llava)  # fmt: skip
    assert reference.result["n_extracted"] == {"train": n_train, "eval": n_test}
    for mine, theirs in zip(_final_files(cache), _final_files(tmp_path / "cache2"), strict=True):
        assert mine.name == theirs.name
        a, b = load_feature_file(mine), load_feature_file(theirs)
        assert a.ids == b.ids and a.failures == b.failures and torch.equal(a.labels, b.labels)
        assert a.failures == [] or a.failures[0]["id"] == "blue/0broken.png"
        for name in ("last_token", "mean"):
            assert torch.equal(a.features[name], b.features[name])
    assert resumed.result["features"] == reference.result["features"]


def _runtime(folder: Path, cache: Path) -> ProbeRuntime:
    return ProbeRuntime(store_path=folder / "runs.sqlite", out_dir=folder, cache_dir=cache,
                        batch_size=2, workers=1, chunk_size=4)  # fmt: skip


@pytest.fixture()
def broken_first(tmp_path):
    """9 colour images after two undecodable ones: the first chunk of 2 decodes nothing."""
    root = write_noisy_colour_folder(tmp_path / "imgs", per_class=3, seed=3, noise=45)
    for name in ("!a.png", "!b.png"):
        (root / "blue" / name).write_bytes(b"not a png")
    data = load_dataset("imagefolder", str(root))
    assert [e.id for e in data.examples[:2]] == ["blue/!a.png", "blue/!b.png"]
    return data


def _cached(data, model, cache: Path):
    return cached_features("random:llava", data.name, data.split, data.examples, lambda: model,
                           "hidden", question=QUESTION, cache_dir=cache, batch_size=2,
                           workers=1, chunk_size=2)  # fmt: skip


def test_crash_then_resume_skips_finished_chunks_and_redoes_bad_ones(broken_first, llava, tmp_path):
    data, cache = broken_first, tmp_path / "cache"
    crashing = CountingImages(llava, fail_after=2)  # chunk 0 decodes nothing: no model call
    with pytest.raises(RuntimeError, match="simulated crash"):
        _cached(data, crashing, cache)
    [folder] = list(cache.rglob("*.partial"))
    planned = plan_chunks(len(data.examples), 2)
    assert sorted(p.name for p in folder.glob("chunk-*")) == [c.file_name for c in planned[:3]]
    # a half-written temporary file, a chunk of another size and a corrupt chunk are not reused
    (folder / f".{planned[3].file_name}.999.tmp").write_bytes(b"half")
    (folder / "chunk-000000000-000000003.safetensors").write_bytes(b"other size")
    (folder / planned[2].file_name).write_bytes(b"corrupt")

    counting = CountingImages(llava)
    resumed = _cached(data, counting, cache)
    n_redone = len(data.examples) - 4  # chunks 0 and 1 were kept
    assert resumed.n_extracted == n_redone and counting.images == n_redone
    assert resumed.path is not None and not partial_folder(resumed.path).exists()

    whole = extract_features(llava, data.examples, "hidden", question=QUESTION, batch_size=2)
    assert resumed.ids == whole.ids and len(resumed.ids) == 9
    assert [f["id"] for f in resumed.failures] == ["blue/!a.png", "blue/!b.png"]
    assert all("not an image" in f["reason"] for f in resumed.failures)
    for name in ("last_token", "mean"):
        assert torch.equal(resumed.features[name], whole.features[name])
    again = _cached(data, CountingImages(llava, fail_after=0), cache)  # the file: no model call
    assert again.from_cache and again.n_extracted == 0 and again.ids == resumed.ids


def test_chunks_written_in_any_split_and_order_assemble_to_the_same_file(
    broken_first, llava, tmp_path
):
    """The layout a data-parallel extraction needs: ranges may be written by different workers in
    any order; one assembles, and the file is the one a single process writes."""
    from vlmclf.analysis.probe.features import ChunkedExtraction, make_key

    data = broken_first
    key = make_key("random:llava", data.name, data.split, data.examples, "hidden", -1, QUESTION)
    path = key.path(tmp_path / "split")

    def worker() -> ChunkedExtraction:
        return ChunkedExtraction(key, path, data.examples, "hidden", QUESTION, -1, chunk_size=3)

    planned = worker().planned()
    worker().extract(llava, planned[1::2][::-1], batch_size=3, workers=1)  # "rank 1", backwards
    assert worker().missing() == planned[0::2]
    worker().extract(llava, planned[0::2], batch_size=3, workers=1)  # "rank 0"
    assert worker().missing() == []
    joined = worker().assemble()
    single = _cached(data, llava, tmp_path / "single")  # chunk size 2, batch 2: other batches
    assert joined.ids == single.ids and joined.failures == single.failures
    for name in ("last_token", "mean"):
        assert torch.allclose(joined.features[name], single.features[name], atol=1e-5)
