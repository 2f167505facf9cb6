"""Class-name frequency counting: Aho-Corasick matcher against the naive sub-list scan.

Generates N seeded synthetic captions mentioning the 998 ImageNet class names, counts them with the
fast matcher (all N) and with the naive scan (a sample only: it costs ~ms per caption with 998
classes), checks both agree on the sample and prints captions/s for each and the ratio, all
measured in this run. The naive figure is the sample's rate, extrapolated per caption.

    python bench/frequency.py [--n 200000] [--naive-sample 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vlmclf.analysis.frequency.corpus import synthetic_captions
from vlmclf.analysis.frequency.run import ClassMatcher, naive_count

CLASSNAMES = Path(__file__).resolve().parents[1] / "src/vlmclf/data/classnames/imagenet.json"


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def run(n: int, naive_sample: int, seed: int) -> dict:
    names = json.loads(CLASSNAMES.read_text(encoding="utf-8"))
    captions = list(synthetic_captions(n, names, seed=seed))
    sample = captions[: min(naive_sample, n)]

    start = time.perf_counter()
    matcher = ClassMatcher(names)
    matcher.add_units(captions)
    fast_s = time.perf_counter() - start

    start = time.perf_counter()
    naive = naive_count(sample, names)
    naive_s = time.perf_counter() - start

    sample_matcher = ClassMatcher(names)
    sample_matcher.add_units(sample)
    fast_rate, naive_rate = _rate(n, fast_s), _rate(len(sample), naive_s)
    return {
        "n_captions": n,
        "n_classes": len(matcher.names),
        "naive_sample": len(sample),
        "fast_seconds": fast_s,
        "naive_seconds_on_sample": naive_s,
        "captions_per_s_fast": fast_rate,
        "captions_per_s_naive": naive_rate,
        "speedup": fast_rate / naive_rate,
        "counts_equal_on_sample": sample_matcher.as_dict() == naive,
        "mentions_on_sample": sum(naive.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="synthetic captions to count")
    parser.add_argument(
        "--naive-sample", type=int, default=2_000, help="captions for the naive scan"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    r = run(args.n, args.naive_sample, args.seed)
    if args.json:
        keys = ("captions_per_s_fast", "captions_per_s_naive", "speedup", "counts_equal_on_sample")
        print(json.dumps({k: r[k] for k in keys}))
    else:
        print(f"{r['n_captions']:,} synthetic captions x {r['n_classes']} ImageNet class names")
        print(
            f"fast (Aho-Corasick): {r['fast_seconds']:.2f} s for all captions, "
            f"{r['captions_per_s_fast']:,.0f} captions/s"
        )
        print(
            f"naive sub-list scan: {r['naive_seconds_on_sample']:.2f} s on a "
            f"{r['naive_sample']:,}-caption sample, {r['captions_per_s_naive']:,.0f} captions/s "
            f"(extrapolated per caption: {r['n_captions'] / r['captions_per_s_naive']:.0f} s "
            "for all)"
        )
        print(f"speedup: {r['speedup']:.0f}x (same run)")
        print(
            f"counts equal on the sample: {r['counts_equal_on_sample']} "
            f"({r['mentions_on_sample']} class mentions)"
        )
    return 0 if r["counts_equal_on_sample"] else 1


if __name__ == "__main__":
    sys.exit(main())
