"""The Python API (`vlmclf.evaluate`, `load_model`, `load_dataset`, `open_store`) against the
CLI it shares its options with: tiny random models, a real image folder, a real store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_data import write_noisy_colour_folder
from typer.testing import CliRunner

import vlmclf
from vlmclf.cli import app
from vlmclf.commands.eval import eval_option_specs
from vlmclf.store import RunStore, StoreMissingError


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_noisy_colour_folder(tmp_path_factory.mktemp("api"), per_class=2, seed=0,
                                     noise=10.0)  # fmt: skip


def cli_json(*args: str) -> dict:
    result = CliRunner().invoke(app, ["eval", *args, "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


API = ["CommandError", "Result", "__version__", "evaluate", "load_dataset", "load_model",
       "open_store"]  # fmt: skip


def test_import_vlmclf_stays_light_and_names_only_the_api():
    code = ("import sys, vlmclf; heavy = [m for m in ('torch', 'transformers', 'vlmclf.api') "
            "if m in sys.modules]; print(heavy, dir(vlmclf))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"[] {API}"
    assert dir(vlmclf) == API  # the same once the API (and other modules of ours) are loaded
    assert sorted([*vlmclf.__all__, "__version__"]) == API
    with pytest.raises(AttributeError, match="no attribute 'evaluat'"):
        vlmclf.evaluat  # noqa: B018


def test_evaluate_is_the_cli_run_same_id_and_summary(folder: Path, tmp_path: Path):
    store = tmp_path / "runs.sqlite"
    result = vlmclf.evaluate(model="random:clip", dataset="imagefolder", method="clip",
                             store=store, data_root=str(folder), progress=False)  # fmt: skip
    cli = cli_json("--model", "random:clip", "--dataset", "imagefolder", "--method", "clip",
                   "--data-root", str(folder), "--store", str(store))  # fmt: skip
    assert result.run_id == cli["run_id"]
    assert result.summary == cli  # the --json dict, key for key
    with RunStore(store, read_only=True) as runs:
        assert [r.run_id for r in runs.list_runs()] == [result.run_id]  # resumed, not re-run


def test_protocol_defaults_and_explicit_options_as_in_the_cli(folder: Path, tmp_path: Path):
    store = tmp_path / "runs.sqlite"
    common = dict(model="random:llava", dataset="imagefolder", method="generate", store=store,
                  data_root=str(folder), progress=False, limit=2)  # fmt: skip
    paper = vlmclf.evaluate(**common, protocol="paper", max_new_tokens=3)
    cli = cli_json("--model", "random:llava", "--dataset", "imagefolder", "--method",
                   "generate", "--data-root", str(folder), "--store", str(store), "--limit",
                   "2", "--protocol", "paper", "--max-new-tokens", "3")  # fmt: skip
    assert paper.run_id == cli["run_id"] and paper.spec.max_new_tokens == 3  # explicit wins
    assert paper.summary["protocol"] == cli["protocol"]
    assert paper.summary["protocol"]["name"] == "paper"
    clean = vlmclf.evaluate(**common, max_new_tokens=3)
    assert clean.run_id != paper.run_id and clean.spec.protocol == "clean"


def test_predictions_frame_has_names_paths_and_every_stored_field(folder: Path, tmp_path: Path):
    store = tmp_path / "runs.sqlite"
    result = vlmclf.evaluate(model="random:llava", dataset="imagefolder", method="generate",
                             store=store, data_root=str(folder), setting="closed", k=2,
                             max_new_tokens=4, progress=False)  # fmt: skip
    frame = result.predictions()
    with RunStore(store, read_only=True) as runs:
        stored = {p.example_id: p for p in runs.predictions(result.run_id)}
    assert len(frame) == result.summary["n"] == len(stored) == 6
    assert result.class_names == ["blue", "green", "red"]
    for row in frame.itertuples():
        p = stored[row.example_id]
        assert (row.label, row.text, row.choices, row.hit) == (p.label, p.text, p.choices, p.hit)
        assert row.label_name == result.class_names[p.label] == Path(row.image).parent.name
        assert Path(row.image).resolve() == (folder / row.example_id).resolve()
        assert (row.pred_name is None) == (p.pred is None)
    assert str(frame["pred"].dtype) == "Int64" and frame["run_id"].eq(result.run_id).all()
    assert {"ok", "error", "scores", "seconds", "extra", "outcome", "flag"} <= set(frame.columns)


def test_result_report_registers_the_analyses_and_names_the_run(folder: Path, tmp_path: Path):
    result = vlmclf.evaluate(model="random:clip", dataset="imagefolder", method="clip",
                             store=tmp_path / "s.sqlite", data_root=str(folder),
                             progress=False)  # fmt: skip
    page = result.report(tmp_path / "r.html").read_text()
    assert result.run_id in page and "<html" in page


def test_bad_options_are_the_clis_one_line_errors_and_store_nothing(folder: Path, tmp_path: Path):
    store = tmp_path / "none.sqlite"
    common = dict(model="random:clip", dataset="imagefolder", store=store, data_root=str(folder))
    with pytest.raises(TypeError, match=r"unknown option 'max_new_token' \(did you mean "
                                        r"'max_new_tokens'\?\)"):  # fmt: skip
        vlmclf.evaluate(**common, method="generate", max_new_token=3)
    with pytest.raises(vlmclf.CommandError, match=r"^method: must be one of clip, generate"):
        vlmclf.evaluate(**common, method="knn")
    with pytest.raises(vlmclf.CommandError, match=r"^limit: must be >= 1, got 0") as err:
        vlmclf.evaluate(**common, method="clip", limit=0)
    assert err.value.code == 2
    with pytest.raises(vlmclf.CommandError, match="--setting closed is for generative models"):
        vlmclf.evaluate(**common, method="clip", setting="closed")
    with pytest.raises(vlmclf.CommandError, match="--agg, --cfg and --calibration apply"):
        vlmclf.evaluate(**common, method="clip", cfg=1.5)
    assert not store.exists()


def test_the_api_options_are_the_cli_options():
    """One definition: every eval flag (but the printout's --json) is an API keyword with the
    flag's default, read from the command itself."""
    import typer.main

    specs = eval_option_specs()
    command = typer.main.get_command(app).commands["eval"]
    flags = {p.name: p.default for p in command.params if p.name != "as_json"}
    assert set(specs) == set(flags)
    for name, default in flags.items():
        if not specs[name].required:
            assert specs[name].default == default or str(specs[name].default) == str(default)


def test_load_dataset_model_and_open_store(folder: Path, tmp_path: Path):
    dataset = vlmclf.load_dataset("imagefolder", data_root=str(folder))
    assert dataset.class_names == ["blue", "green", "red"] and len(dataset) == 6
    assert dataset.examples[0].load().size == (32, 32)
    model = vlmclf.load_model("random:clip", device="cpu")
    assert type(model).__name__ and hasattr(model, "encode_images")
    with pytest.raises(vlmclf.CommandError, match="dtype"):
        vlmclf.load_model("random:clip", device="cpu", dtype="float8")
    result = vlmclf.evaluate(model="random:clip", dataset="imagefolder", method="clip",
                             store=tmp_path / "s.sqlite", data_root=str(folder),
                             progress=False)  # fmt: skip
    with vlmclf.open_store(tmp_path / "s.sqlite") as store:
        assert store.get_run(result.run_id).status == "done"
    with pytest.raises(StoreMissingError):
        vlmclf.open_store(tmp_path / "missing.sqlite")
