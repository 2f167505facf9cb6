"""GPU-box defaults: ``--device auto``, ``--dtype auto`` and ``--batch-size auto``.

The machine has no GPU: what CUDA and MPS would answer is monkeypatched, and the batch search
runs against a method that raises CUDA's out-of-memory error above a threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_eval import eval_json, make_image_folder
from test_identity import BLUE, RED, ColourMethod, config_for, write_manifest
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.data.types import Example
from vlmclf.methods.base import LoadedExample
from vlmclf.records import Prediction
from vlmclf.run.batching import (
    CUDA_AUTO_BATCH,
    BatchSizer,
    predict_with_fallback,
    resolve_batch_size,
)
from vlmclf.run.loading import checkpoint_dtype, resolve_device, resolve_dtype
from vlmclf.run.runner import run
from vlmclf.spec import RunSpec
from vlmclf.store import RunStore


def machine(monkeypatch, *, cuda: int = 0, mps: bool = False, local_rank: str | None = None):
    """Pretend this machine has ``cuda`` GPUs and/or MPS, inside torchrun or not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)


# ------------------------------------------------------------------------- --device

RESOLVED = [  # (GPUs, MPS, LOCAL_RANK, asked, resolved)
    (0, False, None, "auto", "cpu"),
    (0, False, "1", "auto", "cpu"),  # gloo ranks on a CPU machine stay on the CPU
    (0, True, None, "auto", "mps"),
    (0, True, None, "mps", "mps"),
    (2, True, None, "auto", "cuda"),  # CUDA before MPS
    (2, False, None, "AUTO", "cuda"),
    (2, False, "1", "auto", "cuda:1"),  # torchrun: this rank's GPU
    (2, False, "1", "cuda", "cuda:1"),
    (2, False, None, "cuda", "cuda"),
    (2, False, None, "cuda:1", "cuda:1"),
    (2, False, "0", "cuda:1", "cuda:1"),  # an explicit index wins over LOCAL_RANK
    (2, False, "1", "cpu", "cpu"),
]


@pytest.mark.parametrize(("gpus", "mps", "rank", "asked", "expected"), RESOLVED)
def test_device_resolution(monkeypatch, gpus, mps, rank, asked, expected):
    machine(monkeypatch, cuda=gpus, mps=mps, local_rank=rank)
    assert resolve_device(asked) == expected


REFUSED = [  # (GPUs, MPS, LOCAL_RANK, asked, message)
    (0, False, None, "cuda", "--device cuda: CUDA is not available"),
    (0, True, None, "cuda:0", "--device cuda:0: CUDA is not available"),
    (0, False, None, "mps", "--device mps: MPS (Apple GPU) is not available"),
    (2, False, None, "cuda:2", "--device cuda:2: only 2 CUDA device(s) are visible"),
    (2, False, "3", "auto", "--device cuda (LOCAL_RANK=3): only 2 CUDA device(s) are visible"),
    (2, False, "x", "cuda", "LOCAL_RANK must be a whole number >= 0, got 'x'"),
    (2, False, None, "gpu", "--device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    (2, False, None, "cuda:a", "--device must be auto, cpu, cuda, cuda:N or mps, got 'cuda:a'"),
]


@pytest.mark.parametrize(("gpus", "mps", "rank", "asked", "message"), REFUSED)
def test_device_refusals_are_one_line(monkeypatch, gpus, mps, rank, asked, message):
    machine(monkeypatch, cuda=gpus, mps=mps, local_rank=rank)
    with pytest.raises(ValueError) as caught:
        resolve_device(asked)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


# ------------------------------------------------------------------------- --dtype


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory) -> Path:
    """A tiny LLaVA saved in bfloat16 with save_pretrained: an ``hf:<dir>`` checkpoint."""
    from vlmclf.models.random_models import build_random

    model, processor, _ = build_random("llava", 0)
    out = tmp_path_factory.mktemp("bf16-llava")
    model.to(torch.bfloat16).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_auto_dtype_is_the_checkpoints_own_on_an_accelerator(bf16_checkpoint: Path):
    spec = f"hf:{bf16_checkpoint}"
    assert checkpoint_dtype(spec) == "bfloat16"
    for device in ("cuda", "cuda:1", "mps"):
        assert resolve_dtype("auto", spec, device) == "bfloat16"
    assert resolve_dtype("auto", spec, "cpu") == "float32"
    assert resolve_dtype("float16", spec, "cuda") == "float16"  # explicit wins
    # and it is what the weights are: loading with the resolved dtype keeps them as stored
    from vlmclf.models import load_model

    loaded = load_model(spec, dtype=resolve_dtype("auto", spec, "cuda"))
    assert loaded.dtype == torch.bfloat16


def _config_dir(tmp_path: Path, config: dict) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", **config}))
    return f"hf:{tmp_path}"


def test_auto_dtype_reads_every_spelling_of_the_config(tmp_path: Path):
    older = _config_dir(tmp_path / "older", {"torch_dtype": "float16"})
    nested = _config_dir(tmp_path / "nested", {"text_config": {"dtype": "bfloat16"}})
    unnamed = _config_dir(tmp_path / "unnamed", {})
    assert resolve_dtype("auto", older, "cuda") == "float16"
    assert resolve_dtype("auto", older, "cuda", training=True) == "bfloat16"
    assert resolve_dtype("auto", nested, "cuda") == "bfloat16"
    assert resolve_dtype("auto", unnamed, "cuda") == "float32"
    odd = _config_dir(tmp_path / "odd", {"dtype": "float64"})
    with pytest.raises(ValueError, match="stored in float64, which vlmclf does not run"):
        resolve_dtype("auto", odd, "cuda")
    with pytest.raises(ValueError, match="cannot read the config of hf:"):
        resolve_dtype("auto", f"hf:{tmp_path / 'missing'}", "cuda")


@pytest.mark.parametrize("spec", ["random:llava", "organism:vlm", "open_clip:ViT-B-32:x",
                                  "openai:gpt-4o"])  # fmt: skip
def test_auto_dtype_of_models_with_known_dtypes(spec: str):
    assert resolve_dtype("auto", spec, "cuda") == "float32"
    assert resolve_dtype("auto", spec, "cpu") == "float32"


def test_bad_dtype_is_refused():
    with pytest.raises(ValueError) as caught:
        resolve_dtype("float64", "random:llava", "cpu")
    assert str(caught.value) == "--dtype must be auto, float32, float16 or bfloat16, got 'float64'"


# ------------------------------------------------------------------------- CLI defaults


def test_cpu_defaults_are_todays_explicit_cpu_float32(tmp_path: Path, monkeypatch):
    """A run with every default resumes a store written with the old explicit flags: same id,
    nothing recomputed, and a separate run gives the same predictions."""
    machine(monkeypatch)
    data = make_image_folder(tmp_path / "data", per_class=2)
    common = ["--model", "random:clip", "--method", "clip", "--dataset", "imagefolder",
              "--data-root", str(data)]  # fmt: skip
    store = tmp_path / "runs.sqlite"
    explicit = eval_json(*common, "--store", str(store), "--device", "cpu", "--dtype", "float32",
                         "--batch-size", "8")  # fmt: skip
    defaults = eval_json(*common, "--store", str(store))
    assert defaults["run_id"] == explicit["run_id"] and "dtype" not in defaults["spec"]
    again = eval_json(*common, "--store", str(tmp_path / "fresh.sqlite"))
    assert again["run_id"] == explicit["run_id"]
    with RunStore(store) as first, RunStore(tmp_path / "fresh.sqlite") as second:
        assert first.get_run(explicit["run_id"]).n_done == len(list(data.rglob("*.jpg")))
        old = [(p.example_id, p.pred, p.scores) for p in first.predictions(explicit["run_id"])]
        new = [(p.example_id, p.pred, p.scores) for p in second.predictions(again["run_id"])]
        assert old == new
        meta = second.get_run(again["run_id"]).meta
        assert meta["environment"]["device"] == "cpu"  # recorded resolved, never "auto"


def flat(output: str) -> str:
    """Typer's boxed output as one line of words."""
    return " ".join(output.replace("│", " ").split())


def test_on_a_gpu_rank_eval_resolves_everything_before_the_run(bf16_checkpoint, monkeypatch):
    """torchrun rank 1 on a 2-GPU box: the run gets cuda:1, the checkpoint's bfloat16 in its
    RunSpec (so in its identity) and the CUDA batch cap; nothing says auto any more."""
    import vlmclf.run.runner

    machine(monkeypatch, cuda=2, local_rank="1")
    seen = {}

    def capture(spec, config, *args, **kwargs):
        seen.update(spec=spec, config=config)
        raise ValueError("captured")

    monkeypatch.setattr(vlmclf.run.runner, "run", capture)
    args = ["eval", "--model", f"hf:{bf16_checkpoint}", "--method", "generate",
            "--dataset", "x.jsonl", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert "error: captured" in result.output, result.output
    spec, config = seen["spec"], seen["config"]
    assert spec.dtype == "bfloat16" and '"dtype": "bfloat16"' in spec.canonical_json()
    assert config.model.device == "cuda:1" and config.model.dtype == "bfloat16"
    assert config.batch_size == CUDA_AUTO_BATCH


def test_sweep_resolves_the_dtype_of_each_model(bf16_checkpoint: Path):
    from vlmclf.analysis.sweep.run import _with_model_dtype
    from vlmclf.run.loading import ModelOptions
    from vlmclf.run.runner import RunConfig

    on_gpu = RunConfig(model=ModelOptions(device="cuda", dtype="auto"))
    assert _with_model_dtype(on_gpu, f"hf:{bf16_checkpoint}").model.dtype == "bfloat16"
    assert _with_model_dtype(on_gpu, "random:llava").model.dtype == "float32"
    on_cpu = RunConfig(model=ModelOptions(device="cpu", dtype="auto"))
    assert _with_model_dtype(on_cpu, f"hf:{bf16_checkpoint}").model.dtype == "float32"


CLI_REFUSALS = [
    (["--device", "cuda"], "error: --device cuda: CUDA is not available"),
    (["--device", "tpu"], "error: --device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    (["--dtype", "float64"], "error: --dtype must be auto, float32, float16 or bfloat16, got"),
    (["--batch-size", "many"], "'--batch-size': must be a whole number >= 1 or auto, got 'many'"),
]


@pytest.mark.parametrize(("extra", "message"), CLI_REFUSALS, ids=lambda v: str(v))
def test_cli_refuses_hardware_options_in_one_line(tmp_path, monkeypatch, extra, message):
    machine(monkeypatch)
    folder = tmp_path / "data"
    colours = {"a.png": (9, 9, 9), "b.png": (0, 0, 0)}
    write_manifest(folder, {"a.png": "cat", "b.png": "dog"}, colours)
    args = ["eval", "--model", "random:clip", "--method", "clip", "--dataset",
            str(folder / "data.jsonl"), "--store", str(tmp_path / "s.sqlite"), *extra]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in flat(result.output), result.output
    assert "Traceback" not in result.output and not (tmp_path / "s.sqlite").exists()


DEFAULTS = {  # command: its options that default to auto
    ("eval",): ("device", "dtype", "batch_size"),
    ("sweep",): ("device", "dtype", "batch_size"),
    ("probe",): ("device", "dtype", "batch_size"),
    ("finetune",): ("device", "dtype", "batch_size"),
    ("wikiqa",): ("device", "dtype", "batch_size"),
    ("wikiqa", "build"): ("device", "dtype"),
    ("serve",): ("device", "dtype"),
    ("rematch",): ("device",),
    ("demo",): ("device", "batch_size"),
}


@pytest.mark.parametrize("path", list(DEFAULTS), ids=" ".join)
def test_every_model_loading_command_defaults_to_auto(path: tuple[str, ...]):
    import typer.main

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name] if hasattr(command, "commands") else command
    defaults = {param.name: param.default for param in command.params}
    assert all(defaults[name] == "auto" for name in DEFAULTS[path]), defaults


# ------------------------------------------------------------------------- --batch-size


def test_batch_size_auto(monkeypatch):
    assert resolve_batch_size("auto", "cpu", 8) == 8
    assert resolve_batch_size("auto", "mps", 16) == 16
    assert resolve_batch_size("auto", "cuda:3", 8) == CUDA_AUTO_BATCH
    assert resolve_batch_size("32", "cuda", 8) == 32 and resolve_batch_size(4, "cuda", 8) == 4


class FitsBelow:
    """A method that runs out of CUDA memory for chunks larger than ``fits()``."""

    def __init__(self, fits) -> None:
        self.fits = fits
        self.sizes: list[int] = []  # every chunk it was asked for, fitting or not

    def predict(self, batch: list[LoadedExample]) -> list[Prediction]:
        self.sizes.append(len(batch))
        if len(batch) > self.fits():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return [Prediction(i.example.id, i.example.label, pred=0, scores=None) for i in batch]


def _loaded(n: int) -> list[LoadedExample]:
    examples = (Example(f"ex{i:04d}", 0, "test", f"ex{i:04d}.png", lambda: None) for i in range(n))
    return [LoadedExample(example, None) for example in examples]  # type: ignore[arg-type]


def _largest_fitting_by_trying_every_size(threshold: int, cap: int) -> int:
    """The slow answer: try every size from the cap down."""
    return next(size for size in range(cap, 0, -1) if size <= threshold)


@pytest.mark.parametrize("threshold", [1, 2, 3, 37, 64, 100, 127, 128, 500])
def test_batch_search_finds_the_largest_size_that_fits(threshold: int):
    method = FitsBelow(lambda: threshold)
    sizer = BatchSizer(CUDA_AUTO_BATCH)
    items = _loaded(2000)
    out = predict_with_fallback(method, items, sizer)  # type: ignore[arg-type]
    assert [p.example_id for p in out] == [i.example.id for i in items]  # in order, no repeats
    assert all(p.ok for p in out)
    assert sizer.size == _largest_fitting_by_trying_every_size(threshold, CUDA_AUTO_BATCH)
    failures = sum(size > threshold for size in method.sizes)
    assert failures <= 2 * CUDA_AUTO_BATCH.bit_length()  # a search, not a size-by-size walk


def test_batch_search_follows_memory_that_shrinks_mid_run():
    """Memory taken by something else half way: a size that fitted stops fitting."""
    state = {"fits": 40}
    method = FitsBelow(lambda: state["fits"])
    sizer = BatchSizer(CUDA_AUTO_BATCH)
    first = predict_with_fallback(method, _loaded(400), sizer)  # type: ignore[arg-type]
    assert sizer.size == 40
    state["fits"] = 9
    second = predict_with_fallback(method, _loaded(400), sizer)  # type: ignore[arg-type]
    assert sizer.size == 9 and all(p.ok for p in first + second) and len(second) == 400


def test_out_of_memory_at_one_example_is_transient():
    out = predict_with_fallback(FitsBelow(lambda: 0), _loaded(5), BatchSizer(4))  # type: ignore[arg-type]
    assert len(out) == 5 and all(p.outcome == "transient_failure" for p in out)
    assert "out of memory at batch size 1" in out[0].error


def test_a_run_with_the_searched_batch_stores_every_example_once(tmp_path: Path):
    labels = {f"{i:02d}.png": "cat" if i % 3 else "dog" for i in range(50)}
    colours = {name: RED if label == "cat" else BLUE for name, label in labels.items()}
    data = write_manifest(tmp_path / "data", labels, colours)
    calls: list[int] = []

    class Limited(ColourMethod):
        def predict(self, batch):
            if len(batch) > 7:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return super().predict(batch)

    spec = RunSpec(model="fake:colour", dataset=str(data), method="clip")
    config = config_for(tmp_path, batch_size=32)
    result = run(spec, config, lambda m, c, s: Limited(c, calls), load_model=lambda *_: object())
    assert result.summary["n"] == 50 and result.summary["accuracy"] == 1.0
    assert sum(calls) == 50 and max(calls) == 7  # each example once; the search settled on 7
    with RunStore(tmp_path / "runs.sqlite") as store:
        ids = [p.example_id for p in store.predictions(result.run_id)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 50
