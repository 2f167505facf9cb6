"""Does the server's greedy decoder give the model's own answers? Counted on real images.

Answers ``--n`` Fashion-MNIST test images (Debian's ``dataset-fashion-mnist``), each with one of
a few questions of different lengths and token budgets, in batches of ``--batch`` mixed rows
with ``vlmclf.serve.greedy.GreedyDecoder`` (shared prompt prefix, rows leaving when done, the
output layer applied to the last position), and one at a time with ``model.generate``; prints
how many answers are equal, and the time each way took, as JSON.

    python bench/serve_answers.py [--model organism:vlm] [--n 96] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from vlmclf.data.idx import FASHION_MNIST_ROOT, read_fashion_mnist
from vlmclf.models import load_model
from vlmclf.serve.greedy import GreedyDecoder, GreedyRow

QUESTIONS = (
    "What type of object is in this photo?",
    "What is this?",
    "Describe the main object in this picture in a few words, please.",
    "Name the item of clothing shown.",
)
BUDGETS = (1, 4, 16, 24)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism:vlm")
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--root", default=FASHION_MNIST_ROOT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    examples = read_fashion_mnist(args.root, "test").examples[: args.n]
    rng = random.Random(args.seed)
    cases = [(ex.load(), rng.choice(QUESTIONS), rng.choice(BUDGETS)) for ex in examples]

    start = time.perf_counter()
    expected = [model.generate([image], [q], budget)[0] for image, q, budget in cases]
    one_at_a_time_s = time.perf_counter() - start

    decoder = GreedyDecoder(model)
    start = time.perf_counter()
    got = []
    for first in range(0, len(cases), args.batch):
        rows = [
            GreedyRow(image, q, budget) for image, q, budget in cases[first : first + args.batch]
        ]
        got += [
            model.tokenizer.decode(d.token_ids, skip_special_tokens=True).strip()
            for d in decoder.decode(rows)
        ]
    batched_s = time.perf_counter() - start
    different = [(i, a, b) for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    print(json.dumps({
        "model": args.model, "n": len(cases), "batch": args.batch,
        "equal_answers": f"{len(cases) - len(different)}/{len(cases)}",
        "different": different[:5],
        "generate_one_at_a_time_s": round(one_at_a_time_s, 2),
        "greedy_decoder_batched_s": round(batched_s, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
