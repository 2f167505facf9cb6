"""`vlmclf eval --decode-max-pixels`: a different bound is a different run, and images under the
bound give exactly the predictions of a run that decodes everything at full size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.data.images import DEFAULT_DECODE, decode_settings_in_effect
from vlmclf.store import RunStore


def small_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for index, name in enumerate(["tabby cat", "airliner"]):
        (root / name).mkdir(parents=True)
        for i, suffix in enumerate([".jpg", ".png"]):
            pixels = np.full((24, 32, 3), 90 * index) + rng.integers(0, 60, (24, 32, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}{suffix}")
    return root


def eval_run(folder: Path, store: Path, *extra: str) -> tuple[str, list[tuple]]:
    args = ["eval", "--model", "random:clip", "--method", "clip", "--dataset", "imagefolder",
            "--data-root", str(folder), "--store", str(store), "--json", "--no-progress",
            *extra]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout.strip().splitlines()[-1])["run_id"]
    with RunStore(store) as runs:
        predictions = runs.predictions(run_id)
    assert predictions and all(p.ok for p in predictions)
    return run_id, sorted((p.example_id, p.pred, p.scores) for p in predictions)


def test_ordinary_images_give_the_same_predictions_whatever_the_bound(tmp_path: Path) -> None:
    folder = small_folder(tmp_path / "images")
    default_id, default = eval_run(folder, tmp_path / "a.sqlite")
    full_id, full = eval_run(folder, tmp_path / "b.sqlite", "--decode-max-pixels", "0")
    other_id, other = eval_run(folder, tmp_path / "c.sqlite", "--decode-max-pixels", "1000")
    assert len({default_id, full_id, other_id}) == 3  # the bound is part of the run's identity
    assert default == full == other  # 24 x 32 = 768 pixels: under every bound, same pixels
    assert decode_settings_in_effect() == DEFAULT_DECODE  # the command restored the default


def test_a_bound_below_the_images_reduces_them_and_the_run_still_completes(tmp_path: Path) -> None:
    folder = small_folder(tmp_path / "images")
    _, full = eval_run(folder, tmp_path / "a.sqlite", "--decode-max-pixels", "0")
    _, reduced = eval_run(folder, tmp_path / "b.sqlite", "--decode-max-pixels", "100")
    assert [p[0] for p in reduced] == [p[0] for p in full]
    assert [p[2] for p in reduced] != [p[2] for p in full]  # the model saw other pixels
