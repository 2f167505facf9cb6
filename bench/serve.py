"""`vlmclf serve` throughput: sequential requests against 8 concurrent ones, in one run.

Starts servers in this process on loopback ports with the given model: one that micro-batches
(up to ``--concurrency`` requests per batch) and one with ``--max-batch 1`` (one request at a
time: what the server did before micro-batching); with ``--compare-generate`` also one that
micro-batches but answers with the model's own ``generate`` instead of the server's greedy
decoder. The clients are ``--concurrency`` processes, the same in every mode. The
``--n`` different images go out in rounds of ``--round`` (24); every round is
sent in every mode (one request after another, or from ``--concurrency`` client processes), the
order of the modes rotating from round to round, so that a change of load on a shared machine
falls on every mode alike. Prints each mode's requests/s, the ratios, whether each mode gave the
sequential answers, and the load average before and after, all from this run, as JSON.

    python bench/serve.py [--model organism:vlm] [--n 48] [--concurrency 8] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import multiprocessing
import os
import random
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from multiprocessing.pool import Pool

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


def timed(base_url: str, urls: list[str], max_tokens: int) -> tuple[float, list]:
    """Seconds to answer ``urls`` one after another, and the answers."""
    start = time.perf_counter()
    answers = [ask(base_url, url, max_tokens) for url in urls]
    return time.perf_counter() - start, answers


def ask_one(order: tuple[str, str, int]) -> str:
    return ask(*order)


def timed_concurrently(clients: Pool, base_url: str, urls: list[str], max_tokens: int):
    """Seconds to answer ``urls`` from all the client processes at once, and the answers."""
    start = time.perf_counter()
    answers = clients.map(ask_one, [(base_url, url, max_tokens) for url in urls], chunksize=1)
    return time.perf_counter() - start, answers


@dataclass
class Mode:
    """One way of sending the requests, and what it measured over all rounds."""

    name: str
    server: ChatModelServer
    concurrency: int
    seconds: float = 0.0
    answers: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

    def run(self, clients: Pool, urls: list[str], max_tokens: int) -> None:
        """One client sends ``urls`` one after another, or every client at once."""
        sizes_before = len(self.server.batcher.batch_sizes)
        base_url = self.server.base_url
        if self.concurrency == 1:
            seconds, answers = clients.apply(timed, (base_url, urls, max_tokens))
        else:
            seconds, answers = timed_concurrently(clients, base_url, urls, max_tokens)
        self.seconds += seconds
        self.answers += answers
        self.batch_sizes += self.server.batcher.batch_sizes[sizes_before:]


def start_server(model, args: argparse.Namespace, max_batch: int, model_generate: bool):
    limits = ServeLimits(max_batch=max_batch, batch_window_ms=args.window_ms)
    server = ChatModelServer(model, "bench", port=0, limits=limits)
    if model_generate:
        server.engine.greedy = None  # answer with the model's own batched generate
    server.start_in_thread()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism:vlm")
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round", type=int, default=24,
                        help="requests per round (each starts one burst of clients)")  # fmt: skip
    parser.add_argument("--compare-generate", action="store_true",
                        help="also measure the model's own generate behind a server")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    urls = make_image_urls(args.n, args.seed)
    batching = start_server(model, args, args.concurrency, model_generate=False)
    one_at_a_time = start_server(model, args, 1, model_generate=False)
    modes = [Mode("sequential", batching, 1), Mode("concurrent", batching, args.concurrency),
             Mode("concurrent_unbatched", one_at_a_time, args.concurrency)]  # fmt: skip
    if args.compare_generate:
        generating = start_server(model, args, args.concurrency, model_generate=True)
        modes += [Mode("generate_sequential", generating, 1),
                  Mode("generate_concurrent", generating, args.concurrency)]  # fmt: skip
    # the clients are processes of their own, as real clients are: they take no share of the
    # server's interpreter lock, and a burst of them is not spread out waiting for one
    clients = multiprocessing.get_context("spawn").Pool(args.concurrency)
    try:
        for mode in modes:  # warm-up: prefix states, allocator, the clients' threads
            mode.run(clients, urls[:2], args.max_tokens)
            mode.seconds, mode.answers, mode.batch_sizes = 0.0, [], []
        load_before = os.getloadavg()[0]
        for number, start in enumerate(range(0, len(urls), args.round)):
            shift = number % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                mode.run(clients, urls[start : start + args.round], args.max_tokens)
        load_after = os.getloadavg()[0]
    finally:
        clients.close()
        clients.join()
        for server in {mode.server for mode in modes}:
            server.shutdown()
    print(json.dumps(summary(args, modes, load_before, load_after)))


def summary(args: argparse.Namespace, modes: list[Mode], load_before: float, load_after: float):
    by_name = {mode.name: mode for mode in modes}
    sequential = by_name["sequential"]
    rps = {mode.name: len(mode.answers) / mode.seconds for mode in modes}
    result = {
        "model": args.model, "n_requests": args.n, "concurrency": args.concurrency,
        "max_tokens": args.max_tokens, "torch_threads": args.threads,
        **{f"{name}_rps": round(value, 3) for name, value in rps.items()},
        "concurrent_over_sequential": round(rps["concurrent"] / rps["sequential"], 2),
        "unbatched_over_sequential": round(rps["concurrent_unbatched"] / rps["sequential"], 2),
        "mean_batch_concurrent": round(statistics.mean(by_name["concurrent"].batch_sizes), 2),
        "batches_concurrent": by_name["concurrent"].batch_sizes,
    }  # fmt: skip
    if "generate_sequential" in rps:
        generate_sequential = rps["generate_sequential"]
        result["generate_concurrent_over_generate_sequential"] = round(
            rps["generate_concurrent"] / generate_sequential, 2
        )
        result["sequential_over_generate_sequential"] = round(
            rps["sequential"] / generate_sequential, 2
        )
    for mode in modes[1:]:
        same = sum(a == b for a, b in zip(sequential.answers, mode.answers, strict=True))
        result[f"{mode.name}_answers_equal_to_sequential"] = f"{same}/{args.n}"
    result["load_average_before_after"] = [round(load_before, 2), round(load_after, 2)]
    return result


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
