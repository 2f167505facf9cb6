"""Class-name scoring, three ways, on the same model and inputs: ours against the two slow ways.

* ours: prompt prefilled once per batch of images, every distinct class-name prefix scored in
  one pass with a tree attention mask (or cache replication where the mask is not possible);
* paper: the paper's code, prompt prefilled once, then one single-token forward per class token;
* full: lmms-eval's way, one complete forward per class, image included (the ground truth).

Prints seconds per image for each, the speed-ups and the largest disagreement in nats. With many
classes the two slow ways are timed on a sample of classes and extrapolated (the paper's way by
token count, the full way by class count), and the output says so.

    python bench/scoring.py --model random:llava --classes imagenet --json
    python bench/scoring.py --arch llava-1.5-7b --device cuda --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmclf.data.classnames import load_class_names  # noqa: E402
from vlmclf.methods.likelihood.reference import full_forward_log_probs, sequential_log_probs  # noqa: E402
from vlmclf.methods.likelihood.targets import continuation_tokens, make_target  # noqa: E402
from vlmclf.methods.likelihood.trie import TokenSequence, TokenTrie  # noqa: E402
from vlmclf.methods.prompts import build_question  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="random:llava", help="model spec (default random:llava)")
    parser.add_argument(
        "--arch", choices=["llava-1.5-7b"], help="real-size architecture, random weights"
    )
    parser.add_argument("--classes", default="imagenet", help="shipped class list or a file")
    parser.add_argument(
        "--max-classes", type=int, default=None, help="first N distinct names only (default all)"
    )
    parser.add_argument("--images", type=int, default=2, help="images to score (default 2)")
    parser.add_argument("--sample", type=int, default=None, help="classes timed for the slow ways")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for --arch)")
    parser.add_argument(
        "--dtype", default=None, help="float32 or bfloat16 (default: bfloat16 for --arch)"
    )
    parser.add_argument("--max-pass-tokens", type=int, default=None, help="query tokens per pass")
    parser.add_argument(
        "--repeat", type=int, default=3,
        help="time each way this many times and keep the fastest (default 3; 1 = one shot)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


# CLIP ViT-L/14-336 + Vicuna-7B, as in llava-hf/llava-1.5-7b-hf; and a shrunk twin for CPU tests.
LLAVA_15_7B = {
    "image_size": 336, "vision_hidden": 1024, "vision_ffn": 4096, "vision_layers": 24,
    "vision_heads": 16, "text_hidden": 4096, "text_ffn": 11008, "text_layers": 32, "text_heads": 32,
}  # fmt: skip
LLAVA_TINY = {
    "image_size": 28, "vision_hidden": 32, "vision_ffn": 64, "vision_layers": 2,
    "vision_heads": 2, "text_hidden": 64, "text_ffn": 128, "text_layers": 2, "text_heads": 4,
}  # fmt: skip


ARCH_NAME = "arch:llava-1.5-7b"


def build_llava_arch(device: str, dtype: str, tiny: bool = False) -> Any:
    """LLaVA-1.5-7B's architecture (CLIP ViT-L/14-336 + Vicuna-7B) with random weights.

    ``tiny`` shrinks every width and depth (same code path) so tests can build it on a CPU. The
    tokenizer is the project's offline tiny BPE, so class names split differently from the real
    Llama tokenizer, but the number of trie nodes is of the same order.
    """
    import transformers as tf

    from vlmclf.models.families import adapter_by_name
    from vlmclf.models.hf import wrap_model
    from vlmclf.models.random_tokenizer import build_tokenizer

    tokenizer = build_tokenizer("llama")
    sizes = LLAVA_TINY if tiny else LLAVA_15_7B
    size, patch = sizes["image_size"], 14
    vision = tf.CLIPVisionConfig(
        hidden_size=sizes["vision_hidden"], intermediate_size=sizes["vision_ffn"],
        num_hidden_layers=sizes["vision_layers"], num_attention_heads=sizes["vision_heads"],
        image_size=size, patch_size=patch, projection_dim=768, hidden_act="quick_gelu",
    )  # fmt: skip
    text = tf.LlamaConfig(
        vocab_size=32064, hidden_size=sizes["text_hidden"], intermediate_size=sizes["text_ffn"],
        num_hidden_layers=sizes["text_layers"], num_attention_heads=sizes["text_heads"],
        num_key_value_heads=sizes["text_heads"], max_position_embeddings=4096, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    config = tf.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
        image_seq_length=(size // patch) ** 2, vision_feature_select_strategy="default",
        vision_feature_layer=-2, projector_hidden_act="gelu", pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    processor = tf.LlavaProcessor(
        image_processor=tf.CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )  # fmt: skip
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    with torch.device(device):
        model = tf.LlavaForConditionalGeneration._from_config(config, dtype=torch_dtype[dtype])
    return wrap_model(
        model.eval(),
        processor,
        adapter_by_name("llava"),
        ARCH_NAME + ("-tiny" if tiny else ""),
        placed=True,
    )


def load(args: argparse.Namespace) -> Any:
    if args.arch:
        return build_llava_arch(args.device or "cuda", args.dtype or "bfloat16")
    from vlmclf.models import load_model

    return load_model(
        args.model, device=args.device or "cpu", dtype=args.dtype or "float32", seed=0
    )


def bench_images(count: int) -> list[Image.Image]:
    rng = np.random.RandomState(0)
    return [Image.fromarray((rng.rand(48, 64, 3) * 255).astype("uint8")) for _ in range(count)]


def sample_indices(count: int, size: int) -> list[int]:
    """``size`` class indices spread evenly over the list (all of them when it is short)."""
    if size >= count:
        return list(range(count))
    return sorted({int(round(i * (count - 1) / (size - 1))) for i in range(size)})


def timed(device: torch.device, fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """The fastest of ``repeats`` calls (timeit's rule: on a shared machine the slower calls
    measure the other jobs) and the last call's result."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    return measure(load(args), args)


def class_sequences(
    target: Any, classes: str, max_classes: int | None = None
) -> tuple[list[str], str, list[TokenSequence]]:
    """The distinct names of ``classes`` (the first ``max_classes``), the base question, and
    each name's tokens after it."""
    names = list(dict.fromkeys(load_class_names(classes)))[:max_classes]
    question = build_question("base")
    continuations = continuation_tokens(target.tokenizer, target.context_text(question), names)
    return names, question, [continuations[n] for n in names]


def score_images(
    target: Any, question: str, sequences: list[TokenSequence], images: list[Image.Image]
) -> list[list[list[float]]]:
    """Ours: images in groups of as many as one pass holds; ``[image][class][token]``."""
    scorer = target.scorer
    per_pass = scorer.images_per_pass(sequences)
    out: list[list[list[float]]] = []
    for start in range(0, len(images), per_pass):
        for _, prefix in target.image_prefixes(images[start : start + per_pass], question, ()):
            out.extend(scorer.score(prefix, sequences))
    return out


def measure(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The three ways on an already built ``model`` (``bench/gpu_suite.py`` builds its own)."""
    target = make_target(model, max_pass_tokens=args.max_pass_tokens)
    scorer = target.scorer
    names, question, sequences = class_sequences(target, args.classes, args.max_classes)
    images = bench_images(args.images)
    device = scorer.device
    per_pass = scorer.images_per_pass(sequences)

    def ours() -> list[list[list[float]]]:
        return score_images(target, question, sequences, images)

    repeats = getattr(args, "repeat", 1)
    ours()  # warm-up: first-call allocations and kernel selection are not the method's cost
    ours_s, ours_scores = timed(device, ours, repeats)

    sample = sample_indices(len(names), args.sample or (100 if device.type == "cuda" else 40))
    sampled = [sequences[i] for i in sample]
    paper_s = full_s = 0.0
    diffs = {"ours_vs_full": 0.0, "paper_vs_full": 0.0, "ours_vs_paper": 0.0}
    for b, image in enumerate(images):
        inputs = dict(model.build_inputs([image], [question]))
        prefill_s, prefix = timed(device, lambda inputs=inputs: scorer.prefill(inputs), repeats)
        seq_s, paper = timed(
            device, lambda p=prefix: sequential_log_probs(scorer, p, sampled), repeats
        )
        full_b, full = timed(
            device, lambda inputs=inputs: full_forward_log_probs(scorer.model, inputs, sampled),
            repeats,
        )  # fmt: skip
        mine = [ours_scores[b][i] for i in sample]
        diffs["ours_vs_full"] = max(diffs["ours_vs_full"], _max_diff(mine, full))
        diffs["paper_vs_full"] = max(diffs["paper_vs_full"], _max_diff(paper, full))
        diffs["ours_vs_paper"] = max(diffs["ours_vs_paper"], _max_diff(mine, paper))
        total_tokens = sum(len(s) for s in sequences)
        paper_s += prefill_s + seq_s * total_tokens / sum(len(s) for s in sampled)
        full_s += full_b * len(names) / len(sampled)
    n = len(images)
    per_image = {"ours": ours_s / n, "paper": paper_s / n, "full": full_s / n}
    return {
        "model": getattr(model, "name", args.model),
        "device": str(device), "dtype": str(scorer.dtype).replace("torch.", ""),
        "strategy": scorer.strategy, "classes": args.classes, "distinct_names": len(names),
        "class_tokens": sum(len(s) for s in sequences),
        "trie_nodes": TokenTrie.build(sequences).num_nodes, "images": n,
        "images_per_pass": per_pass,
        "sampled_classes": len(sample), "extrapolated": len(sample) < len(names),
        "s_per_image": per_image,
        "speedup_vs_paper": per_image["paper"] / per_image["ours"],
        "speedup_vs_full": per_image["full"] / per_image["ours"],
        "max_abs_diff_nats": max(diffs.values()), "diff_nats": diffs,
        "repeats": repeats, "load_average_1min": _load_average(),
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip


def _load_average() -> float | None:
    """The machine's 1-minute load average when measured: ratios taken under load differ."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for u, v in zip(a, b, strict=True) for x, y in zip(u, v, strict=True))


def report(result: dict[str, Any]) -> str:
    t = result["s_per_image"]
    note = (
        f"timed on {result['sampled_classes']} of {result['distinct_names']} classes, extrapolated "
        "(paper by token count, full by class count)"
        if result["extrapolated"]
        else "all classes timed"
    )
    return "\n".join([
        f"{result['model']} on {result['device']} ({result['dtype']}), "
        f"strategy {result['strategy']}: {result['distinct_names']} names, "
        f"{result['class_tokens']} tokens, {result['trie_nodes']} trie nodes, "
        f"{result['images']} images; fastest of {result['repeats']} per way, "
        f"load average {result['load_average_1min']}",
        f"  ours   {t['ours']:.4f} s/image",
        f"  paper  {t['paper']:.4f} s/image  (one single-token forward per class token)",
        f"  full   {t['full']:.4f} s/image  (one full forward per class, image included)",
        f"  speed-up: {result['speedup_vs_paper']:.1f}x vs paper, "
        f"{result['speedup_vs_full']:.1f}x vs full ({note})",
        f"  largest disagreement: {result['max_abs_diff_nats']:.2e} nats "
        + ", ".join(f"{k} {v:.2e}" for k, v in result["diff_nats"].items()),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.images < 1:
        print("error: --images must be at least 1", file=sys.stderr)
        return 2
    if args.max_classes is not None and args.max_classes < 1:
        print("error: --max-classes must be at least 1", file=sys.stderr)
        return 2
    if not args.arch and (args.device or "cpu") == "cpu":
        torch.set_num_threads(1)  # a shared CPU: one thread, the same for all three ways
    result = run(args)
    print(json.dumps(result) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
