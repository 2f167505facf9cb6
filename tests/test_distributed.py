"""Data parallelism under torchrun: real torch.distributed (gloo on CPU), real subprocesses.

Each test launches torchrun jobs of a few seconds; the variants that add little to the default
run (generation, relaunch as one plain process, c10d rendezvous, sweep and wikiqa) are slow.
Every multi-rank result is compared with a single-process run of the same command, row by row
and bit for bit (ids, order, text, pred, hit, scores, per-token log-probs): ranks run whole
batches of the single-process batch plan, so nothing may differ.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from store_probe import kill_process_tree, rows_committed
from typer.testing import CliRunner

from tests.fixtures_data import make_fashion_tree
from vlmclf.cli import app
from vlmclf.run.sharding import batch_share
from vlmclf.store import RunStore

SRC = Path(__file__).resolve().parents[1] / "src"
ENTRY = Path(__file__).with_name("dist_entry.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
N_EXAMPLES = 12
BATCH = 2
TIMEOUT_S = 180
PLANNED_FAILURE = "planned failure in predict"  # as tests/dist_entry.py raises it


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fashion")
    make_fashion_tree(root, n_train=2, n_test=N_EXAMPLES)
    return root


def eval_args(
    data_root: Path, store: Path | str, method: str = "likelihood", limit: int | None = None
) -> list[str]:
    args = ["eval", "--model", "random:llava", "--method", method, "--dataset", "fashion_mnist",
            "--data-root", str(data_root), "--batch-size", str(BATCH), "--store", str(store),
            "--json", "--no-progress"]  # fmt: skip
    if method == "generate":
        args += ["--setting", "closed", "--k", "3", "--max-new-tokens", "4"]
    return args if limit is None else [*args, "--limit", str(limit)]


def child_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            **extra}  # fmt: skip


def torchrun(nproc: int) -> list[str]:
    return [*TORCHRUN, "--standalone", "--nproc-per-node", str(nproc)]


def launch(command: list[str], cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=child_env(**env), cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)  # fmt: skip


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def stored_rows(store: Path) -> tuple[str, list[dict]]:
    """The run id and its predictions in store order, without the timing."""
    with RunStore(store, read_only=True) as runs:
        (record,) = runs.list_runs()
        rows = [asdict(p) for p in runs.predictions(record.run_id)]
    for row in rows:
        row.pop("seconds")
    return record.run_id, rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_REFERENCES: dict[str, tuple[dict, tuple[str, list[dict]]]] = {}


def single_process(data_root: Path, tmp: Path, method: str) -> tuple[dict, tuple[str, list[dict]]]:
    """The single-process run of the command (summary, stored rows), made once per method."""
    if method not in _REFERENCES:
        store = tmp / f"reference-{method}.sqlite"
        result = CliRunner().invoke(app, eval_args(data_root, store, method))
        assert result.exit_code == 0, result.output
        _REFERENCES[method] = (json_lines(result.stdout)[-1], stored_rows(store))
    return _REFERENCES[method]


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reference")


def without_store(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "store"}


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("n_items", [0, 1, 7, 12])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_batch_shares_recut_into_the_single_process_batches(
    world_size: int, n_items: int, batch_size: int, monkeypatch: pytest.MonkeyPatch
):
    items = list(range(n_items))
    single = [items[i : i + batch_size] for i in range(0, n_items, batch_size)]
    per_rank = {}
    for rank in range(world_size):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
        share = batch_share(items, batch_size)
        assert share.n_steps == -(-len(single) // world_size)
        per_rank[rank] = [share.items[i : i + batch_size]
                          for i in range(0, len(share.items), batch_size)]  # fmt: skip
    for index, batch in enumerate(single):  # batch i is rank i % N's (i // N)-th batch
        assert per_rank[index % world_size][index // world_size] == batch
    assert sum(len(batches) for batches in per_rank.values()) == len(single)


def test_a_bad_rank_environment_is_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    from vlmclf.run.distributed import place

    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        place()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="outside WORLD_SIZE=2"):
        place()


def test_a_plain_process_runs_everything_itself_and_sees_errors_unchanged():
    from vlmclf.run.distributed import (
        every_rank,
        from_main,
        gather_to_main,
        is_main_process,
        on_main,
    )
    from vlmclf.run.sharding import gather_in_steps

    assert is_main_process() and gather_to_main(7) == [7]
    assert on_main(lambda: 1) == from_main(lambda: 2) - 1 == every_rank(lambda: 3) - 2
    taken: list[list[int]] = []
    gather_in_steps(iter([1, 2, 3]), 3, taken.append)
    assert taken == [[1], [2], [3]]
    with pytest.raises(KeyError):  # the error itself, not a wrapper
        every_rank(lambda: {}["missing"])


def test_an_example_missing_on_a_rank_names_the_cause():
    from types import SimpleNamespace

    from vlmclf.run.sharding import pending_examples

    examples = [SimpleNamespace(id=name) for name in ("a", "b", "c")]
    assert [e.id for e in pending_examples(examples, ["c", "a"])] == ["c", "a"]
    with pytest.raises(ValueError, match="'x' .*1 more.*every node must see the same dataset"):
        pending_examples(examples, ["a", "x", "y"])


def test_commands_that_do_not_shard_refuse_to_run_under_torchrun(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    refused = CliRunner().invoke(app, ["demo", "--help"])
    assert refused.exit_code == 2
    assert "`vlmclf demo` does not run under torchrun" in refused.output
    monkeypatch.setenv("RANK", "1")  # the main rank says it; the others leave quietly
    quiet = CliRunner().invoke(app, ["demo", "--help"])
    assert quiet.exit_code == 2 and "error" not in quiet.output
    for sharded in ("eval", "sweep", "wikiqa", "probe", "finetune"):
        assert CliRunner().invoke(app, [sharded, "--help"]).exit_code == 0


# --------------------------------------------------------------------------- torchrun, gloo


@pytest.mark.parametrize("method", ["likelihood", pytest.param("generate", marks=pytest.mark.slow)])
def test_two_ranks_store_exactly_what_one_process_stores(
    method: str, data_root: Path, reference_dir: Path, tmp_path: Path
):
    summary, rows = single_process(data_root, reference_dir, method)
    store = tmp_path / "two.sqlite"
    done = launch([*torchrun(2), "-m", "vlmclf", *eval_args(data_root, store, method)])
    assert done.returncode == 0, done.stderr[-3000:]
    (printed,) = json_lines(done.stdout)  # the main rank alone prints
    assert without_store(printed) == without_store(summary)
    assert stored_rows(store) == rows
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(set(warnings))  # the main rank alone warns


@pytest.mark.parametrize("relaunch_ranks", [3, pytest.param(1, marks=pytest.mark.slow)])
def test_a_killed_job_resumes_with_another_number_of_ranks(
    relaunch_ranks: int, data_root: Path, reference_dir: Path, tmp_path: Path
):
    _, rows = single_process(data_root, reference_dir, "likelihood")
    store = tmp_path / "runs.sqlite"
    args = eval_args(data_root, store)
    job = subprocess.Popen(
        [*torchrun(2), str(ENTRY), *args], env=child_env(VLMCLF_TEST_SLEEP_S="0.5"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT_S
    while rows_committed(store) < 2 * BATCH and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    kill_process_tree(job.pid)  # torchrun and its ranks (each in its own session)
    job.wait()
    at_kill = rows_committed(store)
    assert 0 < at_kill < N_EXAMPLES, "the kill should land part-way through the run"

    if relaunch_ranks == 1:  # a plain process, no torchrun at all
        command = [sys.executable, "-m", "vlmclf", *args]
    else:
        command = [*torchrun(relaunch_ranks), "-m", "vlmclf", *args]
    done = launch(command)
    assert done.returncode == 0, done.stderr[-3000:]
    (printed,) = json_lines(done.stdout)
    assert printed["n"] == N_EXAMPLES
    assert stored_rows(store) == rows  # each example once, in order, bit for bit


@pytest.mark.parametrize("rendezvous", ["static", pytest.param("c10d", marks=pytest.mark.slow)])
def test_two_nodes_on_loopback_share_one_store_on_the_main_node(
    rendezvous: str, data_root: Path, reference_dir: Path, tmp_path: Path
):
    """Two torchrun agents, one per "node", each in its own working directory. A static
    rendezvous makes --node-rank 0 the main node; c10d orders nodes by host name and pid and
    ignores --node-rank, so there either node may hold the store, but only one."""
    _, rows = single_process(data_root, reference_dir, "likelihood")
    port = free_port()
    if rendezvous == "c10d":
        meeting = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                   "--rdzv-id", "vlmclf-test"]  # fmt: skip
    else:
        meeting = ["--master-addr", "127.0.0.1", "--master-port", str(port)]
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    jobs = []
    for node_rank, workdir in enumerate(nodes):
        workdir.mkdir()
        command = [*TORCHRUN, "--nnodes", "2", "--node-rank", str(node_rank),
                   "--nproc-per-node", "1", *meeting,
                   "-m", "vlmclf", *eval_args(data_root, "runs.sqlite")]  # fmt: skip
        jobs.append(subprocess.Popen(command, env=child_env(), cwd=workdir, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    outputs = [job.communicate(timeout=TIMEOUT_S) for job in jobs]
    for job, (_, stderr) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, stderr[-3000:]
    holding = [workdir for workdir in nodes if (workdir / "runs.sqlite").exists()]
    assert len(holding) == 1, "one node holds the store; the other never touches the file"
    if rendezvous == "static":
        assert holding == [nodes[0]]
    printed = [json_lines(stdout) for stdout, _ in outputs]
    assert [len(lines) for lines in printed] == [int(w in holding) for w in nodes]
    assert stored_rows(holding[0] / "runs.sqlite") == rows


def test_a_failing_rank_stops_the_job_with_its_error(data_root: Path, tmp_path: Path):
    store = tmp_path / "runs.sqlite"
    done = launch([*torchrun(2), str(ENTRY), *eval_args(data_root, store)],
                  VLMCLF_TEST_FAIL_RANK="1")  # fmt: skip
    assert done.returncode != 0
    line = f"error: rank 1: ValueError: {PLANNED_FAILURE}"
    assert done.stderr.count(line) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr.split(line)[0]  # the rank's error, not a traceback
    with RunStore(store, read_only=True) as runs:
        (record,) = runs.list_runs()
    assert record.status == "failed"
    assert record.n_done == 0  # rank 1 failed in the first step: nothing of it was written


@pytest.mark.slow
def test_a_rank_without_batches_loads_no_model_and_a_failed_load_stops_the_job(
    data_root: Path, tmp_path: Path
):
    """Building the method fails on rank 2 of 3. With 3 examples in batches of 2, rank 2 has
    nothing to run, builds nothing, and the job equals one process; with 5 it must build, and
    its failure stops the job with its error."""
    one, three = tmp_path / "one.sqlite", tmp_path / "three.sqlite"
    result = CliRunner().invoke(app, eval_args(data_root, one, limit=3))
    assert result.exit_code == 0, result.output
    entry = [*torchrun(3), str(ENTRY)]
    done = launch([*entry, *eval_args(data_root, three, limit=3)], VLMCLF_TEST_FAIL_BUILD_RANK="2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert stored_rows(three) == stored_rows(one)
    failed = launch(
        [*entry, *eval_args(data_root, tmp_path / "fails.sqlite", limit=5)],
        VLMCLF_TEST_FAIL_BUILD_RANK="2",
    )
    assert failed.returncode != 0
    assert failed.stderr.count("error: rank 2: ValueError: planned failure in make_method") == 1


# --------------------------------------------------------------------------- sweep, wikiqa


def all_stored_rows(store: Path) -> dict[str, list[dict]]:
    with RunStore(store, read_only=True) as runs:
        found = {r.run_id: [asdict(p) for p in runs.predictions(r.run_id)]
                 for r in runs.list_runs()}  # fmt: skip
    for rows in found.values():
        for row in rows:
            row.pop("seconds")
    return found


def wikiqa_files(root: Path) -> list[str]:
    """Three ImageWikiQA questions on two small images (one image asked twice)."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    for name, colour in (("v1", (200, 30, 30)), ("v2", (30, 200, 30))):
        Image.new("RGB", (24, 24), colour).save(root / "images" / f"{name}.JPEG")
    options = "\nA. Fish\nB. Grass\nC. Rocks\nD. Metal\nChoose A, B, C, or D."
    rows = [{"image": f"images/{image}.JPEG", "text": f"{stem}{options}", "label": label,
             "wiki": "w", "classname": "c"}
            for image, stem, label in (("v1", "What does it eat?", "A"),
                                       ("v2", "What is it made of?", "D"),
                                       ("v1", "Where is it found?", "C"))]  # fmt: skip
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return ["wikiqa", "--model", "random:llava", "--wikiqa-images", str(root), "--questions",
            str(questions), "--batch-size", "1", "--json", "--no-progress"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sweep", "wikiqa"])
def test_sweep_and_wikiqa_under_two_ranks_equal_one_process(
    command: str, data_root: Path, tmp_path: Path
):
    if command == "sweep":
        args = ["sweep", "--model", "random:llava", "--dataset", "fashion_mnist", "--data-root",
                str(data_root), "--axis", "k=2,3", "--limit", "5", "--batch-size", "2",
                "--json", "--no-progress"]  # fmt: skip
    else:
        args = wikiqa_files(tmp_path / "wikiqa")
    outputs, stores = [], []
    for name, launcher in (("one", [sys.executable]), ("two", [*torchrun(2)])):
        store, out = tmp_path / f"{name}.sqlite", tmp_path / f"{name}-report"
        done = launch([*launcher, "-m", "vlmclf", *args, "--store", str(store), "--out", str(out)])
        assert done.returncode == 0, done.stderr[-3000:]
        (printed,) = json_lines(done.stdout)
        assert all(Path(path).stat().st_size > 0 for path in printed["files"].values())
        outputs.append({k: v for k, v in printed.items() if k not in ("files", "analysis_id")})
        stores.append(all_stored_rows(store))
    assert outputs[0] == outputs[1]
    assert stores[0] == stores[1] and len(stores[0]) == (2 if command == "sweep" else 1)
