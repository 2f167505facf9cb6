"""`vlmclf eval` end to end on tiny random models of every family, through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from store_probe import rows_committed
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.store import RunStore

VLM_FAMILIES = ["llava", "llava_next", "blip2", "instructblip", "qwen2_vl"]
ENCODER_FAMILIES = ["clip", "siglip"]
CLASSES = ["airliner", "golden retriever", "tabby cat", "tiger cat"]


def make_image_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """Real JPEG files in class folders; each class has its own colour plus noise."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((24, 32, 3), 60 * index, dtype=np.int16) + rng.integers(
                0, 40, (24, 32, 3)
            )
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:03d}.jpg")
    return root


def eval_json(*args: str, exit_code: int = 0) -> dict:
    result = CliRunner().invoke(app, ["eval", *args, "--json", "--no-progress"])
    assert result.exit_code == exit_code, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"), per_class=2)


def common(folder: Path, store: Path) -> list[str]:
    return ["--dataset", "imagefolder", "--data-root", str(folder), "--store", str(store)]


@pytest.mark.parametrize("family", VLM_FAMILIES)
@pytest.mark.parametrize("setting", ["open", "closed"])
def test_generate_runs_on_every_vlm_family(family: str, setting: str, folder: Path, tmp_path: Path):
    store = tmp_path / "runs.sqlite"
    args = ["--model", f"random:{family}", "--method", "generate", "--setting", setting]
    args += (
        ["--k", "3", "--max-new-tokens", "6"] if setting == "closed" else ["--max-new-tokens", "6"]
    )
    summary = eval_json(*args, *common(folder, store))
    assert summary["n"] == 8 and summary["n_failed"] == 0
    assert 0.0 <= summary["accuracy"] <= 1.0 and len(summary["ci95"]) == 2
    with RunStore(store) as runs:
        predictions = runs.predictions(summary["run_id"])
    assert all(isinstance(p.text, str) for p in predictions)
    if setting == "closed":
        assert all(len(p.choices) == 3 and p.label in p.choices for p in predictions)


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_clip_zero_shot_runs_on_every_encoder_family(family: str, folder: Path, tmp_path: Path):
    summary = eval_json(
        "--model", f"random:{family}", "--method", "clip", *common(folder, tmp_path / "s.sqlite")
    )
    assert summary["n"] == 8 and summary["top5"] is not None
    ensembled = eval_json(
        "--model",
        f"random:{family}",
        "--method",
        "clip",
        "--templates",
        "imagenet80",
        *common(folder, tmp_path / "s.sqlite"),
    )
    assert ensembled["run_id"] != summary["run_id"]


def test_wrong_method_for_model_kind_names_the_fix(folder: Path, tmp_path: Path):
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--model",
            "random:clip",
            "--method",
            "generate",
            *common(folder, tmp_path / "s.sqlite"),
        ],
    )
    assert result.exit_code == 2
    assert "use --method clip" in result.output


def test_bad_arguments_name_the_argument(folder: Path, tmp_path: Path):
    runner = CliRunner()
    bad_method = runner.invoke(
        app, ["eval", "--model", "random:llava", "--method", "guess", "--dataset", "x"]
    )
    assert bad_method.exit_code == 2 and "--method" in bad_method.output
    bad_k = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "random:llava",
            "--method",
            "generate",
            "--k",
            "1",
            *common(folder, tmp_path / "s.sqlite"),
        ],
    )
    assert bad_k.exit_code == 2 and "--k must be at least 2" in bad_k.output
    unknown = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "random:llava",
            "--method",
            "generate",
            "--dataset",
            "nonesuch",
            "--store",
            str(tmp_path / "s.sqlite"),
        ],
    )
    assert unknown.exit_code == 2 and "fashion_mnist" in unknown.output


def test_bad_images_become_failed_examples(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", per_class=2)
    (root / "tabby cat" / "empty.jpg").write_bytes(b"")
    (root / "tiger cat" / "text.jpg").write_text("not an image")
    good = (root / "airliner" / "000.jpg").read_bytes()
    (root / "airliner" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    summary = eval_json(
        "--model", "random:clip", "--method", "clip", *common(root, tmp_path / "s.sqlite")
    )
    assert summary["n"] == 11 and summary["n_failed"] == 3
    with RunStore(tmp_path / "s.sqlite") as runs:
        failed = {p.example_id: p.error for p in runs.predictions(summary["run_id"]) if not p.ok}
    assert "zero-byte" in failed["tabby cat/empty.jpg"] or "empty" in failed["tabby cat/empty.jpg"]
    assert set(failed) == {"tabby cat/empty.jpg", "tiger cat/text.jpg", "airliner/truncated.jpg"}


def test_every_example_failing_exits_non_zero(tmp_path: Path):
    root = tmp_path / "images"
    for name in CLASSES[:2]:
        (root / name).mkdir(parents=True)
        (root / name / "bad.jpg").write_bytes(b"")
    summary = eval_json(
        "--model",
        "random:clip",
        "--method",
        "clip",
        *common(root, tmp_path / "s.sqlite"),
        exit_code=1,
    )
    assert summary["n_failed"] == summary["n"] == 2


def test_every_model_sees_the_same_choices(folder: Path, tmp_path: Path):
    store = tmp_path / "s.sqlite"
    choices = []
    for family in ("llava", "blip2"):
        summary = eval_json(
            "--model",
            f"random:{family}",
            "--method",
            "generate",
            "--setting",
            "closed",
            "--k",
            "3",
            "--order",
            "random",
            "--seed",
            "7",
            "--max-new-tokens",
            "4",
            *common(folder, store),
        )
        with RunStore(store) as runs:
            choices.append({p.example_id: p.choices for p in runs.predictions(summary["run_id"])})
    assert choices[0] == choices[1]
    assert len({tuple(c) for c in choices[0].values()}) > 1  # shuffled per example


def test_run_killed_with_sigkill_resumes_without_duplicates_or_gaps(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", per_class=12)
    n = 4 * 12
    args = [
        "--model",
        "random:llava",
        "--method",
        "generate",
        "--setting",
        "closed",
        "--k",
        "3",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "2",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(root),
    ]
    killed_store = tmp_path / "killed.sqlite"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "vlmclf.cli",
        "eval",
        *args,
        "--store",
        str(killed_store),
        "--no-progress",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while (
        rows_committed(killed_store) < 6 and time.monotonic() < deadline and process.poll() is None
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored_at_kill = rows_committed(killed_store)
    assert 0 < stored_at_kill < n, "the kill should land part-way through the run"

    resumed = eval_json(*args, "--store", str(killed_store))
    fresh = eval_json(*args, "--store", str(tmp_path / "fresh.sqlite"))
    assert rows_committed(killed_store) == n
    with RunStore(killed_store) as runs:
        ids = [p.example_id for p in runs.predictions(resumed["run_id"])]
    assert len(ids) == len(set(ids)) == n
    for key in ("n", "accuracy", "strict_accuracy", "macro_f1", "ci95"):
        assert resumed[key] == fresh[key], key
    assert resumed["run_id"] == fresh["run_id"]


def test_prompt_longer_than_the_context_is_warned_with_numbers():
    from vlmclf.data import load_class_names
    from vlmclf.methods.generate import GenerateMethod
    from vlmclf.models import load_model
    from vlmclf.spec import RunSpec

    model = load_model("random:blip2")  # OPT with a 2048-token context
    names = load_class_names("imagenet")
    spec = RunSpec(model="random:blip2", dataset="imagenet", method="generate", setting="closed")
    (warning,) = GenerateMethod(model, names, spec).preflight()
    assert "2048" in warning and "lower --k" in warning
    fits = RunSpec(
        model="random:blip2", dataset="imagenet", method="generate", setting="closed", k=5
    )
    assert GenerateMethod(model, names, fits).preflight() == []


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").exists(), reason="Debian's dataset-fashion-mnist"
)
def test_cfg_sweep_tunes_on_validation_and_reports_test(tmp_path: Path):
    args = [
        "--model",
        "random:llava",
        "--dataset",
        "fashion_mnist",
        "--method",
        "likelihood",
        "--limit",
        "6",
        "--store",
        str(tmp_path / "s.sqlite"),
    ]
    summary = eval_json(*args, "--cfg-sweep", "--val-limit", "6")
    assert summary["val_split"] == "train" and summary["val_n"] == 6 and summary["n"] == 6
    assert 0.0 <= summary["cfg_t"] <= 2.0 and summary["split"] == "test"
    with RunStore(tmp_path / "s.sqlite") as runs:
        (sweep,) = runs.list_analyses("cfg_sweep")
        test_predictions = runs.predictions(sweep.result["test_run_id"])
    assert all(p.extra.get("image_free") for p in test_predictions)
    wrong = CliRunner().invoke(app, ["eval", *args[:-2], "--method", "generate", "--cfg", "1.5"])
    assert wrong.exit_code == 2
