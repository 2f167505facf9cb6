"""The accelerator suite (``bench/gpu_suite.py``) run tiny on the CPU: its JSON, its parts'
budgets and failures, and the pieces whose exactness the GPU figures rest on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_suite():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_gpu_suite", BENCH / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


suite = load_suite()
clip_part = suite.clip_part


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "gpu_suite.json"
    code = suite.main(["--tiny", "--device", "cpu", "--out", str(out)])
    return code, json.loads(out.read_text())


def test_tiny_suite_writes_every_figure(tiny_result):
    code, data = tiny_result
    assert code == 0 and data["finished"] and data["mode"] == "tiny"
    assert {p: data["parts"][p]["status"] for p in suite.PARTS} == dict.fromkeys(suite.PARTS, "ok")
    assert data["device"]["name"] and data["versions"]["torch"] == torch.__version__
    assert data["host_peak_rss_bytes"] > 0
    figures = data["figures"]
    assert set(figures["likelihood_s_per_image"]) == {
        "ours", "full_one_forward_per_class", "paper_sequential"
    }  # fmt: skip
    assert all(v > 0 for v in figures["likelihood_s_per_image"].values())
    for key in ("generation_open_images_per_s", "generation_closed_images_per_s",
                "clip_images_per_s"):  # fmt: skip
        assert figures[key] > 0
    assert figures["goals_met"] == dict.fromkeys(("likelihood", "generation", "clip"))  # tiny
    clip = data["parts"]["clip"]
    assert clip["predicted"] == clip["files"]
    assert clip["tower_images_per_s"] > 0 and clip["decode_images_per_s"] > 0


def test_tiny_suite_scores_are_exact_and_bf16_close_to_fp32(tiny_result):
    _, data = tiny_result
    like = data["parts"]["likelihood"]
    assert like["dtype"] == "bfloat16" and like["strategy"] == "tree"
    assert like["bench_scoring"]["max_abs_diff_nats"] < 0.02  # ours, paper, full in bf16
    ref = like["fp32_reference"]
    assert ref["fp32_ours_vs_fp32_full_nats"] < 1e-4  # the reference itself is exact
    assert 0 < ref["max_abs_diff_nats"] < 0.05  # bf16 differs from fp32, but little
    assert ref["top1_preserved"] and ref["spearman_min"] > 0.99
    tried = like["ours_s_per_image_by_max_pass_tokens"]
    assert set(tried) == {"256", "512"} and all(v > 0 for v in tried.values())


def test_generation_tries_every_batch_size_until_past_the_peak(tiny_result):
    _, data = tiny_result
    for setting in ("open", "closed"):
        found = data["parts"]["generation"][setting]
        rates = found["images_per_s_by_batch"]
        assert found["images_per_s"] == max(rates.values())
        assert rates[str(found["best_batch"])] == found["images_per_s"]


def test_generation_stops_at_the_first_out_of_memory_batch(monkeypatch):
    from vlmclf.models.hf import HFVisionLanguageModel

    def generate(self, images, questions, max_new_tokens):
        if len(images) >= 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
        time.sleep(0.02)  # a fixed time per call: larger batches are faster per image
        return ["a"] * len(images)

    monkeypatch.setattr(HFVisionLanguageModel, "generate", generate)
    run = suite.PartSetting(suite.TINY, "cpu", "float32", True, suite.PartClock(60))
    out: dict = {}
    suite.generation_part(run, out, lambda: None)
    for setting in ("open", "closed"):
        assert out[setting]["out_of_memory_at_batch"] == 4
        assert set(out[setting]["images_per_s_by_batch"]) == {"1", "2"}


def test_uint8_crops_normalised_on_device_equal_the_processor_pixels(tmp_path):
    encoder = clip_part.build_clip_arch("cpu", torch.float32, tiny=True)
    processor = encoder.processor.image_processor
    path = tmp_path / "photo.jpg"
    clip_part.synthetic_photo(3, (71, 53)).save(path, format="JPEG", quality=90)
    crop = clip_part.uint8_crop(processor, path)
    assert crop.dtype == torch.uint8 and crop.shape == (3, 28, 28)
    got = clip_part.normalizer(processor, torch.device("cpu"), torch.float32)(crop[None])
    want = processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")
    assert torch.allclose(got, want["pixel_values"], atol=1e-6)


def test_ranking_agreement_against_scipy():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(3, 40))
    other = reference + rng.normal(scale=0.3, size=reference.shape)
    found = suite.ranking_agreement(reference.tolist(), other.tolist())
    want = min(spearmanr(r, o).statistic for r, o in zip(reference, other, strict=True))
    assert found["spearman_min"] == pytest.approx(want, abs=1e-12)
    assert not found["full_ranking_preserved"]
    same = suite.ranking_agreement(reference.tolist(), (reference * 2 + 1).tolist())
    assert same["full_ranking_preserved"] and same["top1_preserved"]
    swapped = reference.copy()
    top = swapped[0].argsort()[-2:]
    swapped[0, top] = swapped[0, top[::-1]]
    assert not suite.ranking_agreement(reference.tolist(), swapped.tolist())["top1_preserved"]


def _run_fake_part(monkeypatch, tmp_path, runner, budget_s):
    monkeypatch.setitem(suite.RUNNERS, "clip", runner)
    report = suite.SuiteReport(tmp_path / "s.json", {"parts": {}})
    setting = {"sizes": suite.TINY, "device": "cpu", "dtype": "float32", "tiny": True}
    suite.run_part("clip", setting, budget_s, report)
    return json.loads((tmp_path / "s.json").read_text())["parts"]["clip"]


def test_a_part_that_overruns_keeps_what_it_measured(monkeypatch, tmp_path):
    def overrun(run, out, flush):
        out["first"] = 1.5
        flush()
        time.sleep(30)  # stopped by the part's alarm (budget + grace), not waited out

    start = time.perf_counter()
    monkeypatch.setattr(suite.PartClock, "__init__", _short_grace)
    section = _run_fake_part(monkeypatch, tmp_path, overrun, 0.2)
    assert time.perf_counter() - start < 5
    assert section["status"] == "out_of_time" and section["first"] == 1.5


def _short_grace(self, budget_s, grace_s=0.1):
    self.budget_s, self.grace_s, self.start = budget_s, 0.1, time.perf_counter()


def test_a_part_checks_its_budget_between_steps(monkeypatch, tmp_path):
    def steps(run, out, flush):
        out["steps"] = 0
        while True:
            run.clock.check("the next step")
            out["steps"] += 1
            time.sleep(0.05)

    section = _run_fake_part(monkeypatch, tmp_path, steps, 0.3)
    assert section["status"] == "out_of_time" and section["steps"] >= 2
    assert "before the next step" in section["stopped"]


def test_a_failing_part_says_why_in_one_line(monkeypatch, tmp_path):
    def broken(run, out, flush):
        out["partial"] = True
        raise RuntimeError("no kernel image is available\nsecond line")

    section = _run_fake_part(monkeypatch, tmp_path, broken, 10)
    assert section["status"] == "failed" and section["partial"] is True
    assert section["error"] == "RuntimeError: no kernel image is available"


def test_unknown_part_is_a_clear_error(tmp_path, capsys):
    assert suite.main(["--tiny", "--parts", "likelihood,speed", "--out", str(tmp_path / "x")]) == 2
    assert "--parts: unknown ['speed']" in capsys.readouterr().err


@pytest.mark.slow
def test_shell_entry_point_writes_the_json_under_out(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_suite.sh"), "--tiny", "--device", "cpu", "--parts", "clip"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert data["finished"] and data["parts"]["clip"]["status"] == "ok"
