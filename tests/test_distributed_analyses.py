"""`probe` and `finetune` under torchrun: real torch.distributed (gloo on CPU), real subprocesses,
each compared with one process running the same command.

probe: the missing feature chunks are split across ranks and written by the main rank, so the
cache files must be bit for bit those of one process, and a job SIGKILLed part-way must resume
from its finished chunks with another number of ranks. finetune: with N ranks each step's batch
of B is split into N blocks and the gradients are summed by DDP, so 2 ranks must give bit for
bit what one process gives with ``--batch-size B/2`` (the same forward passes, and a sum of
two gradients, which is commutative in floating point). Against one process without
micro-batches, or with 3 ranks (another summation order), equality holds up to float rounding
(the slow test, with a tolerance justified there).
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from fixtures_data import write_noisy_colour_folder
from safetensors.torch import load_file
from store_probe import kill_process_tree
from typer.testing import CliRunner

from tests.test_distributed import (
    ENTRY,
    TIMEOUT_S,
    TORCHRUN,
    child_env,
    free_port,
    json_lines,
    launch,
    torchrun,
)
from vlmclf.analysis.probe.chunks import HOLD_ENV
from vlmclf.analysis.probe.features import load_feature_file
from vlmclf.cli import app
from vlmclf.store import RunStore

CHUNK = 4
N_TRAIN = 13  # 4 colours x 3 + one undecodable file: chunks of 4, 4, 4, 1
N_EVAL = 6


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("colours")
    train = write_noisy_colour_folder(base / "train", per_class=4, seed=1, noise=45)
    (train / "blue" / "0broken.png").write_bytes(b"not a png")  # a failure kept in chunk 0
    test = write_noisy_colour_folder(base / "test", per_class=2, seed=2, noise=45)
    clean = write_noisy_colour_folder(base / "clean", per_class=3, seed=3, noise=45)
    return {"train": train, "test": test, "clean_train": clean}


def run_here(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return launch(command, cwd=cwd, **env)


def one_process() -> list[str]:
    return [sys.executable, "-m", "vlmclf"]


def in_this_process(args: list[str], cwd: Path) -> dict:
    """The command run by this process in ``cwd`` (no interpreter to start); its JSON."""
    cwd.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (printed,) = json_lines(result.stdout)
    return printed


# --------------------------------------------------------------------------- probe


def probe_args(colours: dict[str, Path]) -> list[str]:
    """Relative --cache-dir, --store and --out: each job runs in its own folder."""
    return ["probe", "--model", "random:llava", "--dataset", "imagefolder", "--eval-split", "test",
            "--data-root", str(colours["test"]), "--train-data-root", str(colours["train"]),
            "--epochs", "2", "--feature-chunk", str(CHUNK), "--batch-size", "2",
            "--workers", "1", "--cache-dir", "cache", "--store", "runs.sqlite", "--out", "report",
            "--json", "--no-progress"]  # fmt: skip


def feature_files(cache: Path) -> dict[str, Path]:
    return {path.name: path for path in cache.rglob("*.safetensors")
            if not path.parent.name.endswith(".partial")}  # fmt: skip


def chunk_files(cache: Path) -> list[Path]:
    return list(cache.rglob("chunk-*.safetensors"))


def assert_same_feature_files(mine: Path, reference: Path) -> None:
    """The same cache files, bit for bit: ids, failures, labels and every tensor."""
    files, expected = feature_files(mine), feature_files(reference)
    assert sorted(files) == sorted(expected) and len(files) == 2
    for name, path in files.items():
        a, b = load_feature_file(path), load_feature_file(expected[name])
        assert a.ids == b.ids and a.failures == b.failures and torch.equal(a.labels, b.labels)
        assert sorted(a.features) == sorted(b.features) == ["last_token", "mean"]
        for pooling in a.features:
            assert torch.equal(a.features[pooling], b.features[pooling])


def probe_outcome(printed: dict) -> dict:
    """What must not depend on N: everything but ids, paths, how much came from disk and the
    environment it ran in (torchrun gives each rank one CPU thread)."""
    dropped = ("analysis_id", "files", "cache_files", "from_cache", "n_extracted", "environment")
    return {key: value for key, value in printed.items() if key not in dropped}


@pytest.fixture(scope="module")
def probe_reference(colours: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One plain process: (its printed result, its folder)."""
    folder = tmp_path_factory.mktemp("probe-one")
    printed = in_this_process(probe_args(colours), folder)
    assert printed["n_failed"] == {"train": 1, "eval": 0}
    return printed, folder


def test_probe_under_two_ranks_writes_the_single_process_features(
    colours: dict[str, Path], probe_reference: tuple[dict, Path], tmp_path: Path
):
    printed_one, folder_one = probe_reference
    done = run_here([*torchrun(2), "-m", "vlmclf", *probe_args(colours)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (printed,) = json_lines(done.stdout)  # the main rank alone trains and prints
    assert printed["n_extracted"] == {"train": N_TRAIN, "eval": N_EVAL}
    assert probe_outcome(printed) == probe_outcome(printed_one)  # same probe accuracies
    assert_same_feature_files(tmp_path / "cache", folder_one / "cache")
    assert not chunk_files(tmp_path / "cache")  # assembled, the chunks removed
    with RunStore(tmp_path / "runs.sqlite", read_only=True) as store:
        assert len(store.list_analyses()) == 1  # stored once, by the main rank


@pytest.mark.parametrize(
    "relaunch", ["one process", pytest.param("3 ranks", marks=pytest.mark.slow)]
)
def test_a_killed_probe_job_resumes_from_its_chunks_with_another_number_of_ranks(
    relaunch: str, colours: dict[str, Path], probe_reference: tuple[dict, Path], tmp_path: Path
):
    printed_one, folder_one = probe_reference
    job = subprocess.Popen(
        [*torchrun(2), "-m", "vlmclf", *probe_args(colours)], cwd=tmp_path,
        env=child_env(**{HOLD_ENV: "2"}), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT_S
    cache = tmp_path / "cache"
    while len(chunk_files(cache)) < 2 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    kill_process_tree(job.pid)  # torchrun and its ranks (each in its own session)
    job.wait()
    assert len(chunk_files(cache)) == 2 and not feature_files(cache)  # the first step's chunks

    launcher = one_process() if relaunch == "one process" else [*torchrun(3), "-m", "vlmclf"]
    done = run_here([*launcher, *probe_args(colours)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (printed,) = json_lines(done.stdout)
    assert printed["n_extracted"] == {"train": N_TRAIN - 2 * CHUNK, "eval": N_EVAL}
    assert probe_outcome(printed) == probe_outcome(printed_one)
    assert_same_feature_files(cache, folder_one / "cache")


def test_a_rank_failing_in_extraction_stops_the_probe_with_its_error(
    colours: dict[str, Path], tmp_path: Path
):
    done = run_here([*torchrun(2), str(ENTRY), *probe_args(colours)], tmp_path,
                    VLMCLF_TEST_FAIL_FEATURES_RANK="1")  # fmt: skip
    assert done.returncode != 0
    line = "error: rank 1: ValueError: planned failure in features_of_batch"
    assert done.stderr.count(line) == 1, done.stderr[-3000:]
    assert not (tmp_path / "runs.sqlite").exists() and not feature_files(tmp_path / "cache")


# --------------------------------------------------------------------------- finetune

BATCH = 4
STEPS = 3


def finetune_args(colours: dict[str, Path], batch: int = BATCH,
                  eval_limit: int | None = 2) -> list[str]:  # fmt: skip
    """Training images that all decode: a skipped image changes how one process cuts its
    micro-batches, and with it the float rounding (see the README)."""
    args = ["finetune", "--model", "random:llava", "--dataset", "imagefolder",
            "--data-root", str(colours["test"]), "--train-data-root", str(colours["clean_train"]),
            "--train-limit", "8", "--step-batch-size", str(batch), "--steps", str(STEPS),
            "--lr-projector", "1e-2", "--warmup-ratio", "0", "--workers", "1",
            "--store", "runs.sqlite", "--out", "tuned", "--json", "--no-progress"]  # fmt: skip
    if eval_limit is None:
        return args
    return [*args, "--limit", str(eval_limit), "--eval-batch-size", "1"]  # 1 per rank


def loss_log(folder: Path) -> list[dict[str, str]]:
    with (folder / "tuned" / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.pop("seconds")
    return rows


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "tuned" / "model.safetensors"))


def after_predictions(folder: Path, run_id: str) -> list[tuple]:
    with RunStore(folder / "runs.sqlite", read_only=True) as store:
        rows = [asdict(p) for p in store.predictions(run_id)]
    return [(row["example_id"], row["text"], row["pred"]) for row in rows]


def finetune_outcome(printed: dict) -> dict:
    kept = {k: v for k, v in printed.items()
            if k not in ("analysis_id", "files", "wall_time_s", "checkpoint",
                         "environment")}  # fmt: skip
    kept["after"] = {k: v for k, v in printed["after"].items() if k not in ("model", "run_id")}
    return kept


LORA = ["--train", "projector+lora", "--lr-lora", "1e-2", "--lora-dropout", "0"]


@pytest.mark.parametrize("parts", ["projector", pytest.param("lora", marks=pytest.mark.slow)])
def test_finetune_under_two_ranks_equals_one_process_bit_for_bit(
    parts: str, colours: dict[str, Path], tmp_path: Path
):
    """LoRA without dropout: dropout masks come from each rank's own RNG stream."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*finetune_args(colours), *(LORA if parts == "lora" else [])]
    printed_one = in_this_process([*args, "--batch-size", "2"], one)
    done = run_here([*torchrun(2), "-m", "vlmclf", *args], two)
    assert done.returncode == 0, done.stderr[-3000:]
    (printed,) = json_lines(done.stdout)
    assert loss_log(two) == loss_log(one) and len(loss_log(two)) == STEPS
    mine, reference = weights(two), weights(one)
    assert sorted(mine) == sorted(reference)
    assert all(torch.equal(mine[name], reference[name]) for name in mine)
    assert finetune_outcome(printed) == finetune_outcome(printed_one)
    assert printed["before"]["run_id"] == printed_one["before"]["run_id"]
    # the evaluation after training went through the sharded runner with each rank's copy
    assert after_predictions(two, printed["after"]["run_id"]) == after_predictions(
        one, printed_one["after"]["run_id"]
    )
    with RunStore(two / "runs.sqlite", read_only=True) as store:
        assert [a.kind for a in store.list_analyses()] == ["finetune"]


def test_a_rank_failing_in_training_stops_the_job_with_its_error(
    colours: dict[str, Path], tmp_path: Path
):
    args = finetune_args(colours, eval_limit=None)
    done = run_here([*torchrun(2), str(ENTRY), *args], tmp_path, VLMCLF_TEST_FAIL_LOSS_RANK="1")
    assert done.returncode != 0
    line = "error: rank 1: ValueError: planned failure in batch_loss"
    assert done.stderr.count(line) == 1, done.stderr[-3000:]
    assert not (tmp_path / "tuned" / "model.safetensors").exists()


@pytest.mark.slow
def test_finetune_under_three_ranks_equals_one_process_up_to_float_rounding(
    colours: dict[str, Path], tmp_path: Path
):
    """3 ranks and a batch of 6 against one process with a batch of 6 and no micro-batches:
    other forward batches (padding) and another order of the gradient sum, so float32 rounding
    differs (a few ulps of each gradient; measured: 4.6e-8 at most in weights of size <= 0.09
    after 3 steps, and 3.6e-7 between one process with and without micro-batches). A real
    fault (a rank's gradient lost or counted twice, tokens normalised per rank) moves weights
    by about the learning rate, 1e-2 per step: the tolerance, 1e-5, sits well between."""
    one, three = tmp_path / "one", tmp_path / "three"
    args = finetune_args(colours, batch=6, eval_limit=None)
    in_this_process(args, one)
    done = run_here([*torchrun(3), "-m", "vlmclf", *args], three)
    assert done.returncode == 0, done.stderr[-3000:]
    mine, reference = weights(three), weights(one)
    for name in mine:
        torch.testing.assert_close(mine[name], reference[name], rtol=0, atol=1e-5)
    for a, b in zip(loss_log(three), loss_log(one), strict=True):
        assert a["tokens"] == b["tokens"] and a["examples"] == b["examples"]
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)


@pytest.mark.slow
def test_a_diverging_job_stops_every_rank_with_exit_3_and_the_main_rank_s_report(
    colours: dict[str, Path], tmp_path: Path
):
    """A learning rate of 1e30 makes the loss NaN at step 2 on every rank at once (the ranks
    see the same numbers); the main rank writes the report and stores the analysis while the
    others wait, then all exit 3."""
    args = [*finetune_args(colours, eval_limit=None), "--steps", "6", "--lr-projector", "1e30"]
    done = run_here([*torchrun(2), "-m", "vlmclf", *args], tmp_path)
    assert done.returncode != 0
    assert done.stderr.count("exitcode  : 3") == 2, done.stderr[-3000:]
    (printed,) = json_lines(done.stdout)
    assert printed["status"] == "diverged" and printed["divergence"]["step"] == 2
    assert (tmp_path / "tuned" / "divergence.json").is_file()
    with RunStore(tmp_path / "runs.sqlite", read_only=True) as store:
        assert [a.result["status"] for a in store.list_analyses()] == ["diverged"]


@pytest.mark.slow
def test_probe_on_two_loopback_nodes_keeps_its_cache_on_the_main_node(
    colours: dict[str, Path], probe_reference: tuple[dict, Path], tmp_path: Path
):
    """Two torchrun agents (static rendezvous), each in its own folder with a relative
    --cache-dir: the second node's rank extracts chunks but never writes the cache."""
    printed_one, folder_one = probe_reference
    meeting = ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    jobs = []
    for node_rank, folder in enumerate(nodes):
        folder.mkdir()
        command = [*TORCHRUN, "--nnodes", "2", "--node-rank", str(node_rank),
                   "--nproc-per-node", "1", *meeting, "-m", "vlmclf", *probe_args(colours)]
        jobs.append(subprocess.Popen(command, env=child_env(), cwd=folder, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    outputs = [job.communicate(timeout=TIMEOUT_S) for job in jobs]
    for job, (_, stderr) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, stderr[-3000:]
    assert not (nodes[1] / "cache").exists() and not (nodes[1] / "runs.sqlite").exists()
    (printed,) = json_lines(outputs[0][0])
    assert json_lines(outputs[1][0]) == []
    assert probe_outcome(printed) == probe_outcome(printed_one)
    assert_same_feature_files(nodes[0] / "cache", folder_one / "cache")
