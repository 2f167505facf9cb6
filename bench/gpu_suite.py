"""The accelerator suite: class scoring, generation and CLIP at LLaVA-1.5-7B scale, one JSON file.

Real-size architectures with random bf16 weights, built from configs in code (nothing is
downloaded): LLaVA-1.5-7B (CLIP ViT-L/14-336 + Vicuna-7B, ``bench/scoring.py``'s builder) and
CLIP ViT-L/14-336 (``bench/gpu_suite_clip.py``). Three parts, each with its own time budget:

* likelihood: 998-way ImageNet class-name scoring, s/image, ours (images batched into trie
  passes) against one full forward per class and the paper's sequential loop (both timed on a
  sample of classes and extrapolated, as ``bench/scoring.py`` does), then bf16 against an fp32
  copy of the same weights on a few images (largest disagreement in nats, ranking kept or not);
* generation: open- and closed-world greedy answers through the wrapper's HF ``generate``,
  images/s at each batch size tried, and the best;
* clip: zero-shot images/s end to end from JPEG files decoded in worker processes, with the
  image tower alone and the decoding alone beside it.

The JSON is rewritten after every step, so a part that fails or runs out of time leaves what it
measured and says why it stopped. ``--tiny`` runs the same code with CI-size models on a CPU.

    bench/gpu_suite.sh                 # on the GPU machine: writes $OUT/gpu_suite.json
    bench/gpu_suite.sh --tiny          # anywhere, in seconds
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_suite_clip as clip_part  # noqa: E402
import scoring  # noqa: E402

from vlmclf.data.classnames import load_class_names  # noqa: E402

PARTS = ("likelihood", "generation", "clip")
GOALS = {  # issue 15's targets
    "likelihood_s_per_image": 0.08, "generation_open_images_per_s": 30.0,
    "clip_images_per_s": 900.0,
}  # fmt: skip


@dataclass(frozen=True)
class SuiteSizes:
    """How much each part does; ``REAL`` fits about 7 minutes on an H100/H200."""

    budgets_s: dict[str, float]
    total_budget_s: float
    max_classes: int | None  # first N distinct ImageNet names; None: all 998
    score_images: int  # images timed for ours
    compare_images: int  # images on which ours, paper and full are compared
    sample_classes: int  # classes timed for the two slow ways
    reference_images: int  # images scored in bf16 and fp32
    self_check_classes: int  # classes on which fp32 ours is checked against fp32 full forwards
    pass_tokens_tried: tuple[int, ...]  # other max_pass_tokens settings ours is timed with
    batch_sizes: tuple[int, ...]
    max_new_tokens: int
    closed_k: int
    clip_files: int
    clip_batch: int  # images per forward of the image tower
    decode_batch: int  # crops per hand-over from a decoding worker
    tower_repeats: int


REAL = SuiteSizes(
    budgets_s={"likelihood": 200.0, "generation": 130.0, "clip": 90.0}, total_budget_s=450.0,
    max_classes=None, score_images=16, compare_images=2, sample_classes=64, reference_images=2,
    self_check_classes=8, pass_tokens_tried=(4096, 16384, 32768),
    batch_sizes=(8, 16, 32, 64, 128, 256), max_new_tokens=32,
    closed_k=100, clip_files=4096, clip_batch=256, decode_batch=32, tower_repeats=8,
)  # fmt: skip
TINY = SuiteSizes(
    budgets_s={"likelihood": 60.0, "generation": 30.0, "clip": 30.0}, total_budget_s=150.0,
    max_classes=24, score_images=2, compare_images=1, sample_classes=4, reference_images=2,
    self_check_classes=4, pass_tokens_tried=(256,), batch_sizes=(1, 2, 4), max_new_tokens=3,
    closed_k=10,
    clip_files=16, clip_batch=8, decode_batch=4, tower_repeats=2,
)  # fmt: skip


class OutOfTime(Exception):
    """A part used up its budget; what it measured so far stays in the JSON."""


# ------------------------------------------------------------------ the JSON file


class SuiteReport:
    """The result as it grows; ``flush`` rewrites the file atomically after every step."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data

    def flush(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=2, default=_jsonable) + "\n")
        os.replace(partial, self.path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (torch.device, torch.dtype, Path)):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


class PartClock:
    """A part's budget: ``check`` between steps, and an alarm for a step that overruns."""

    def __init__(self, budget_s: float, grace_s: float = 5.0):
        self.budget_s = budget_s
        self.start = time.perf_counter()
        self.grace_s = grace_s

    def remaining(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def check(self, next_step: str) -> None:
        if self.remaining() <= 0:
            raise OutOfTime(f"budget of {self.budget_s:.0f} s used up before {next_step}")

    @contextmanager
    def alarm(self) -> Iterator[None]:
        """Raise ``OutOfTime`` inside a step that runs past the budget (plus grace)."""

        def ring(signum: int, frame: object) -> None:
            raise OutOfTime(f"budget of {self.budget_s:.0f} s used up during a step")

        previous = signal.signal(signal.SIGALRM, ring)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, self.remaining() + self.grace_s))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ environment


def device_facts(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda", "name": torch.cuda.get_device_name(device),
            "count": torch.cuda.device_count(), "memory_bytes": int(props.total_memory),
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": int(props.multi_processor_count),
            "fp32_matmul_allows_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        }  # fmt: skip
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "count": 1}


def versions() -> dict[str, Any]:
    import PIL
    import tokenizers
    import transformers

    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "pillow": PIL.__version__, "numpy": np.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()
        if torch.cuda.is_available() else None,
        "vlmclf_commit": _git_commit(),
    }  # fmt: skip


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, timeout=5,
            capture_output=True, text=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def cpu_workers() -> int:
    """Decode processes: every core but one (the one feeding the device)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(15, cores - 1))


def host_peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ likelihood


def ranking_agreement(reference: list[list[float]], other: list[list[float]]) -> dict[str, Any]:
    """How far ``other``'s class ranking per image keeps ``reference``'s (rows: images)."""
    ref, got = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    ref_order, got_order = np.argsort(-ref, axis=1), np.argsort(-got, axis=1)
    spearman = [_rank_correlation(r, g) for r, g in zip(ref, got, strict=True)]
    top2 = np.sort(ref, axis=1)[:, -2:]
    return {
        "top1_preserved": bool((ref_order[:, 0] == got_order[:, 0]).all()),
        "top5_preserved": bool((ref_order[:, :5] == got_order[:, :5]).all()),
        "full_ranking_preserved": bool((ref_order == got_order).all()),
        "spearman_min": float(min(spearman)),
        "reference_top1_margin_nats_min": float((top2[:, 1] - top2[:, 0]).min()),
    }


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a = np.argsort(np.argsort(a)).astype(np.float64)
    ranks_b = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def _max_token_diff(a: list[list[list[float]]], b: list[list[list[float]]]) -> float:
    return max(
        abs(x - y)
        for image_a, image_b in zip(a, b, strict=True)
        for seq_a, seq_b in zip(image_a, image_b, strict=True)
        for x, y in zip(seq_a, seq_b, strict=True)
    )


def suite_images(count: int) -> list[Any]:
    return [clip_part.synthetic_photo(seed) for seed in range(count)]


@dataclass(frozen=True)
class PartSetting:
    """What every part is given: the sizes, where and in what precision to run, its clock."""

    sizes: SuiteSizes
    device: str
    dtype: str
    tiny: bool
    clock: PartClock


def likelihood_part(run: PartSetting, out: dict, flush: Callable) -> None:
    """Ours timed on ``score_images``; the three ways compared; bf16 against fp32 weights."""
    from vlmclf.methods.likelihood.reference import full_forward_log_probs
    from vlmclf.methods.likelihood.targets import make_target
    from vlmclf.models.hf import wrap_model

    sizes, clock, dtype = run.sizes, run.clock, run.dtype
    torch.manual_seed(0)
    model = scoring.build_llava_arch(run.device, dtype, tiny=run.tiny)
    target = make_target(model)
    names, question, sequences = scoring.class_sequences(target, "imagenet", sizes.max_classes)
    out.update({
        "model": model.name, "dtype": dtype, "strategy": target.scorer.strategy,
        "attn_implementation": model.model.config.text_config._attn_implementation,
        "tokenizer": "offline tiny BPE (random_tokenizer.py)",
        "tokenizer_size": len(target.tokenizer),
        "distinct_names": len(names), "class_tokens": sum(len(s) for s in sequences),
        "trie_nodes": scoring.TokenTrie.build(sequences).num_nodes,
        "images_per_pass": target.scorer.images_per_pass(sequences),
        "max_pass_tokens": target.scorer.max_pass_tokens,
    })  # fmt: skip
    flush()
    images = suite_images(sizes.score_images)
    clock.check("ours")
    per_pass = target.scorer.images_per_pass(sequences)
    scoring.score_images(target, question, sequences, images[:per_pass])  # warm-up
    seconds, bf16_scores = scoring.timed(
        target.scorer.device, lambda: scoring.score_images(target, question, sequences, images)
    )
    ours_s = seconds / len(images)
    out["s_per_image"] = {"ours": ours_s}
    out["images"] = len(images)
    flush()

    clock.check("the comparison with the two slow ways")
    args = scoring.parse_args([
        "--classes", "imagenet", "--images", str(sizes.compare_images),
        "--sample", str(sizes.sample_classes),
        *([] if sizes.max_classes is None else ["--max-classes", str(sizes.max_classes)]),
    ])  # fmt: skip
    compared = scoring.measure(model, args)
    out["bench_scoring"] = compared
    out["s_per_image"].update({
        "full_one_forward_per_class": compared["s_per_image"]["full"],
        "paper_sequential": compared["s_per_image"]["paper"],
    })  # fmt: skip
    out["slow_ways_extrapolated_from_classes"] = compared["sampled_classes"]
    out["max_abs_diff_nats_same_dtype"] = compared["max_abs_diff_nats"]
    flush()

    clock.check("the fp32 reference")
    reference = wrap_model(
        copy.deepcopy(model.model).float(),
        model.processor,
        model.adapter,
        model.name + "-fp32",
        placed=True,
    )
    ref_target = make_target(reference)
    few = images[: sizes.reference_images]
    ref_scores = scoring.score_images(ref_target, question, sequences, few)
    inputs = dict(reference.build_inputs(few[:1], [question]))
    checked = scoring.sample_indices(len(sequences), sizes.self_check_classes)
    full = full_forward_log_probs(reference.model, inputs, [sequences[i] for i in checked])
    self_check = max(
        abs(x - y)
        for i, want in zip(checked, full, strict=True)
        for x, y in zip(ref_scores[0][i], want, strict=True)
    )
    mine = bf16_scores[: len(few)]
    out["fp32_reference"] = {
        "images": len(few), "max_abs_diff_nats": _max_token_diff(mine, ref_scores),
        "fp32_ours_vs_fp32_full_nats": self_check, "fp32_checked_classes": len(checked),
        "aggregation": "sum of token log-probs",
        **ranking_agreement(
            [[sum(s) for s in image] for image in ref_scores],
            [[sum(s) for s in image] for image in mine],
        ),
    }  # fmt: skip
    flush()
    del reference, ref_target
    _free(target.scorer.device)
    out["ours_s_per_image_by_max_pass_tokens"] = {str(target.scorer.max_pass_tokens): ours_s}
    for tokens in sizes.pass_tokens_tried:
        clock.check(f"ours with max_pass_tokens {tokens}")
        other = make_target(model, max_pass_tokens=tokens)
        seconds = _time_ours(other, question, sequences, images)
        out["ours_s_per_image_by_max_pass_tokens"][str(tokens)] = seconds / len(images)
        flush()


def _time_ours(target: Any, question: str, sequences: list, images: list) -> float:
    """Seconds for ours on ``images`` after a warm-up on the first pass's worth of them."""
    per_pass = target.scorer.images_per_pass(sequences)
    scoring.score_images(target, question, sequences, images[:per_pass])
    seconds, _ = scoring.timed(
        target.scorer.device, lambda: scoring.score_images(target, question, sequences, images)
    )
    return seconds


# ------------------------------------------------------------------ generation


def generation_part(run: PartSetting, out: dict, flush: Callable) -> None:
    """Greedy open- and closed-world answers through HF ``generate``, one timed call per batch
    size; larger batches are tried until images/s falls or the budget ends."""
    from vlmclf.data.choices import sample_choices
    from vlmclf.methods.prompts import build_question

    sizes, clock, dtype = run.sizes, run.clock, run.dtype
    torch.manual_seed(0)
    model = scoring.build_llava_arch(run.device, dtype, tiny=run.tiny)
    names = list(dict.fromkeys(load_class_names("imagenet")))
    images = suite_images(max(sizes.batch_sizes))
    open_question = build_question("base")
    closed_questions = [
        build_question(
            "base",
            [names[i] for i in sample_choices(i % len(names), names, sizes.closed_k, "random", 0,
                                              f"img{i}")],
        )
        for i in range(len(images))
    ]  # fmt: skip
    out.update({
        "model": model.name, "dtype": dtype, "max_new_tokens": sizes.max_new_tokens,
        "closed_world_k": sizes.closed_k, "decoding": "greedy, HF generate, processor in the loop",
    })  # fmt: skip
    model.generate(images[:2], [open_question] * 2, 2)  # warm-up
    for setting in ("open", "closed"):
        found: dict[str, Any] = {"images_per_s_by_batch": {}}
        out[setting] = found
        for batch in sizes.batch_sizes:
            clock.check(f"{setting} world at batch {batch}")
            questions = [open_question] * batch if setting == "open" else closed_questions[:batch]
            try:
                seconds, answers = _timed(
                    model.device, lambda b=batch, q=questions: model.generate(
                        images[:b], q, sizes.max_new_tokens)
                )  # fmt: skip
            except torch.cuda.OutOfMemoryError:
                found["out_of_memory_at_batch"] = batch
                _free(model.device)
                break
            rate = batch / seconds
            found["images_per_s_by_batch"][str(batch)] = rate
            best = max(found["images_per_s_by_batch"].values())
            found["best_batch"] = int(
                max(found["images_per_s_by_batch"], key=found["images_per_s_by_batch"].get)
            )
            found["images_per_s"] = best
            found["answers_nonempty"] = sum(bool(a) for a in answers)
            flush()
            if rate < 0.9 * best:
                break  # past the peak


def _timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - start, result


# ------------------------------------------------------------------ CLIP


def clip_part_run(run: PartSetting, out: dict, flush: Callable) -> None:
    """Zero-shot CLIP end to end from JPEG files, then the tower alone and the decoding alone."""
    from vlmclf.methods.zeroshot import class_text_embeddings

    sizes, clock, dtype = run.sizes, run.clock, getattr(torch, run.dtype)
    torch.manual_seed(0)
    encoder = clip_part.build_clip_arch(run.device, dtype, tiny=run.tiny)
    names = list(dict.fromkeys(load_class_names("imagenet")))[: sizes.max_classes]
    workers = min(cpu_workers(), 2) if run.tiny else cpu_workers()
    out.update({
        "model": encoder.name, "dtype": str(dtype).replace("torch.", ""), "classes": len(names),
        "attn_implementation": encoder.model.config._attn_implementation,
        "template": "A photo of a {}", "files": sizes.clip_files, "batch": sizes.clip_batch,
        "decode_batch": sizes.decode_batch,
        "workers": workers, "photo_size": list(clip_part.PHOTO_SIZE),
    })  # fmt: skip
    start = time.perf_counter()
    text = class_text_embeddings(encoder, names, ["A photo of a {}"]).to(encoder.device)
    out["text_embeddings_s"] = time.perf_counter() - start
    flush()
    with clip_part.jpeg_folder(sizes.clip_files, workers) as paths:
        clock.check("the zero-shot pass")
        warm = paths[: sizes.clip_batch]  # kernel selection and worker start-up, untimed
        batches = (sizes.clip_batch, workers, sizes.decode_batch)
        clip_part.zero_shot_from_files(encoder, text, warm, *batches)
        result = clip_part.zero_shot_from_files(encoder, text, paths, *batches)
        out.update({
            "images_per_s": result["images_per_s"],
            "steady_images_per_s": result["steady_images_per_s"],
            "end_to_end_s": result["seconds"], "predicted": result["images"],
        })  # fmt: skip
        flush()
        clock.check("the tower alone")
        out["tower_images_per_s"] = clip_part.tower_images_per_s(
            encoder, sizes.clip_batch, sizes.tower_repeats
        )
        flush()
        clock.check("the decoding alone")
        out["decode_images_per_s"] = clip_part.decode_images_per_s(
            paths, encoder.processor.image_processor, sizes.decode_batch, workers
        )
        flush()


RUNNERS = {"likelihood": likelihood_part, "generation": generation_part, "clip": clip_part_run}


# ------------------------------------------------------------------ the suite


def run_part(name: str, setting: dict[str, Any], budget_s: float, report: SuiteReport) -> None:
    """One part under its budget; its section says ok, failed (with why) or out_of_time."""
    section: dict[str, Any] = {"status": "running", "budget_s": budget_s}
    report.data["parts"][name] = section
    report.flush()
    torch_device = torch.device(setting["device"])
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    clock = PartClock(budget_s)
    try:
        with clock.alarm():
            RUNNERS[name](PartSetting(clock=clock, **setting), section, report.flush)
        section["status"] = "ok"
    except OutOfTime as stop:
        section["status"] = "out_of_time"
        section["stopped"] = str(stop)
    except Exception as error:  # noqa: BLE001 - a failed part must not lose the others
        section["status"] = "failed"
        section["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        section["traceback_tail"] = traceback.format_exc().splitlines()[-6:]
    finally:
        section["wall_s"] = time.perf_counter() - clock.start
        if torch_device.type == "cuda":
            section["peak_device_memory_bytes"] = int(torch.cuda.max_memory_allocated(torch_device))
        section["host_peak_rss_bytes"] = host_peak_rss_bytes()
        _free(torch_device)
        report.flush()


def figures(parts: dict[str, Any], real: bool) -> dict[str, Any]:
    """The headline numbers and whether each meets issue 15's goal (None where not measured,
    and for tiny models, to which the goals do not apply)."""
    like, gen, clip = (parts.get(p, {}) for p in PARTS)
    ours = like.get("s_per_image", {}).get("ours")
    ref = like.get("fp32_reference", {})
    open_rate = gen.get("open", {}).get("images_per_s")
    clip_rate = clip.get("images_per_s")

    def goal(value: float | None, met: Callable[[float], bool]) -> bool | None:
        return None if value is None or not real else met(value)

    return {
        "likelihood_s_per_image": like.get("s_per_image"),
        "likelihood_max_abs_diff_nats_vs_fp32": ref.get("max_abs_diff_nats"),
        "likelihood_fp32_top1_preserved": ref.get("top1_preserved"),
        "generation_open_images_per_s": open_rate,
        "generation_closed_images_per_s": gen.get("closed", {}).get("images_per_s"),
        "clip_images_per_s": clip_rate,
        "goals_met": {
            "likelihood": goal(ours, lambda v: v <= GOALS["likelihood_s_per_image"]),
            "generation": goal(open_rate, lambda v: v >= GOALS["generation_open_images_per_s"]),
            "clip": goal(clip_rate, lambda v: v >= GOALS["clip_images_per_s"]),
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="CI-size models (runs on a CPU)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
        help="weights and activations of the timed models (default bfloat16, also on a CPU)",
    )  # fmt: skip
    default_out = Path(os.environ.get("OUT") or ".") / "gpu_suite.json"
    parser.add_argument("--out", type=Path, default=default_out, help=f"(default {default_out})")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    parser.add_argument(
        "--budget-scale", type=float, default=1.0, help="multiply every time budget by this"
    )
    return parser.parse_args(argv)


def selected_parts(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PARTS]
    if unknown or not chosen:
        raise ValueError(f"--parts: unknown {unknown or text!r}; accepted: {', '.join(PARTS)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        parts = selected_parts(args.parts)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.budget_scale <= 0:
        print("error: --budget-scale must be positive", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(1)  # CPU runs are the tiny check, on shared machines
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    sizes = TINY if args.tiny else REAL
    started = time.perf_counter()
    report = SuiteReport(args.out, {
        "suite": "bench/gpu_suite.py", "mode": "tiny" if args.tiny else "real",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "finished": False,
        "device": device_facts(torch.device(device)), "dtype": args.dtype, "versions": versions(),
        "goals": GOALS,
        "sizes": sizes.__dict__, "parts": {},
    })  # fmt: skip
    report.flush()
    total = sizes.total_budget_s * args.budget_scale
    for name in parts:
        left = total - (time.perf_counter() - started)
        budget = min(sizes.budgets_s[name] * args.budget_scale, left)
        if budget <= 0:
            report.data["parts"][name] = {"status": "skipped", "why": "the total budget is spent"}
            continue
        setting = {"sizes": sizes, "device": device, "dtype": args.dtype, "tiny": args.tiny}
        run_part(name, setting, budget, report)
    if device == "cuda":
        report.data["peak_device_memory_bytes"] = max(
            p.get("peak_device_memory_bytes", 0) for p in report.data["parts"].values()
        )
    report.data["host_peak_rss_bytes"] = host_peak_rss_bytes()
    report.data["figures"] = figures(report.data["parts"], real=not args.tiny)
    report.data["wall_s"] = time.perf_counter() - started
    report.data["finished"] = True
    report.flush()
    print(summary(report.data))
    return 0 if all(p.get("status") == "ok" for p in report.data["parts"].values()) else 1


def summary(data: dict[str, Any]) -> str:
    """A few lines for the end of the log: each part's status and headline figures."""
    lines = [f"{data['device']['name']} ({data['mode']}, {data['dtype']}), {data['wall_s']:.0f} s"]
    for name, part in data["parts"].items():
        status = f"  {name:<11}{part.get('status', '?'):<12}{part.get('wall_s', 0):5.0f} s  "
        lines.append(status + _headline(name, part))
    return "\n".join(lines)


def _headline(name: str, part: dict[str, Any]) -> str:
    if name == "likelihood" and "s_per_image" in part:
        t, ref = part["s_per_image"], part.get("fp32_reference", {})
        text = ", ".join(f"{k} {v:.4g} s/image" for k, v in t.items())
        if ref:
            kept = "kept" if ref["top1_preserved"] else "NOT kept"
            text += f"; vs fp32 {ref['max_abs_diff_nats']:.3g} nats, top-1 {kept}"
        return text
    if name == "generation":
        found = [
            f"{s} {part[s]['images_per_s']:.4g} images/s (batch {part[s]['best_batch']})"
            for s in ("open", "closed")
            if "images_per_s" in part.get(s, {})
        ]
        return ", ".join(found)
    if name == "clip" and "images_per_s" in part:
        extra = [f"{k} {part[f'{k}_images_per_s']:.4g}" for k in ("tower", "decode")
                 if f"{k}_images_per_s" in part]  # fmt: skip
        return f"{part['images_per_s']:.4g} images/s end to end ({', '.join(extra)})"
    return part.get("error") or part.get("stopped") or ""


if __name__ == "__main__":
    sys.exit(main())
