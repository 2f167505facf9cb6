"""`vlmclf serve` throughput: sequential requests against 8 concurrent ones, in one run.

Starts the server in this process on a loopback port with the given model, sends ``--n``
different images one after another, then the same number again from ``--concurrency`` client
threads (micro-batched into batched generates), then once more concurrently against a server
with ``--max-batch 1`` (one request at a time: what the server did before micro-batching).
Prints requests/s for each and the ratios, all measured in this run, as JSON.

    python bench/serve.py [--model organism:vlm] [--n 32] [--concurrency 8] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import statistics
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image

from vlmclf.models import load_model
from vlmclf.serve import ChatModelServer, ServeLimits

QUESTION = "What type of object is in this photo?"


def make_image_urls(n: int, seed: int) -> list[str]:
    """``n`` distinct 224x224 PNGs: random colour blocks, so no two requests are alike."""
    rng = random.Random(seed)
    urls = []
    for _ in range(n):
        image = Image.new("RGB", (224, 224), tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(6):
            x, y = rng.randrange(200), rng.randrange(200)
            block = Image.new("RGB", (rng.randrange(8, 96),) * 2,
                              tuple(rng.randrange(256) for _ in range(3)))  # fmt: skip
            image.paste(block, (x, y))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return urls


def ask(base_url: str, url: str, max_tokens: int) -> str:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    body = {"model": "bench", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}]}  # fmt: skip
    request = urllib.request.Request(f"{base_url}/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"]


def timed(base_url: str, urls: list[str], max_tokens: int, concurrency: int) -> tuple[float, list]:
    start = time.perf_counter()
    if concurrency == 1:
        answers = [ask(base_url, url, max_tokens) for url in urls]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            answers = list(pool.map(lambda u: ask(base_url, u, max_tokens), urls))
    return time.perf_counter() - start, answers


def measure(model, urls: list[str], args: argparse.Namespace, max_batch: int) -> dict:
    limits = ServeLimits(max_batch=max_batch, batch_window_ms=args.window_ms)
    server = ChatModelServer(model, "bench", port=0, limits=limits)
    server.start_in_thread()
    try:
        timed(server.base_url, urls[:2], args.max_tokens, 1)  # warm-up
        server.batcher.batch_sizes.clear()
        out = {}
        for name, concurrency in (("sequential", 1), ("concurrent", args.concurrency)):
            if max_batch == 1 and name == "sequential":
                continue
            sizes_before = len(server.batcher.batch_sizes)
            seconds, answers = timed(server.base_url, urls, args.max_tokens, concurrency)
            sizes = server.batcher.batch_sizes[sizes_before:]
            out[name] = {
                "seconds": round(seconds, 3),
                "requests_per_s": round(len(urls) / seconds, 3),
                "mean_batch": round(statistics.mean(sizes), 2),
                "answers": answers,
            }
        return out
    finally:
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism:vlm")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    urls = make_image_urls(args.n, args.seed)
    batched = measure(model, urls, args, max_batch=args.concurrency)
    unbatched = measure(model, urls, args, max_batch=1)
    sequential = batched["sequential"]
    same = sum(a == b for a, b in zip(sequential["answers"], batched["concurrent"]["answers"],
                                      strict=True))  # fmt: skip
    result = {
        "model": args.model, "n_requests": args.n, "concurrency": args.concurrency,
        "max_tokens": args.max_tokens, "torch_threads": args.threads,
        "sequential_rps": sequential["requests_per_s"],
        "concurrent_rps": batched["concurrent"]["requests_per_s"],
        "concurrent_unbatched_rps": unbatched["concurrent"]["requests_per_s"],
        "concurrent_over_sequential": round(
            batched["concurrent"]["requests_per_s"] / sequential["requests_per_s"], 2),
        "unbatched_over_sequential": round(
            unbatched["concurrent"]["requests_per_s"] / sequential["requests_per_s"], 2),
        "mean_batch_concurrent": batched["concurrent"]["mean_batch"],
        "answers_equal_to_sequential": f"{same}/{args.n}",
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
