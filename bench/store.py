"""Store size, write, summary and export at ImageNet scale: schema 3 (JSON) vs schema 4 (packed).

    python bench/store.py --json            # 50,000 x ImageNet's 1,000 names (998 distinct)
    python bench/store.py --n 300 --json    # a quick run

A synthetic likelihood run: per image, every distinct class name's per-token log-probs (float32
values, as models give them; token counts from the project's offline BPE tokenizer applied to
ImageNet's class names, ~4.3 tokens per name), the float64 class scores summed from them, and
with guidance (``cfg``) the image-free log-probs, the same for every image. Each phase runs in a
child process that reports its own peak RSS (``resource.getrusage``), so phases do not inherit
each other's memory.

* new layout: ``--n`` rows (with the image-free prior) for size, write, columnar summary, and the
  export of ``--export-n`` of them; ``--old-n`` rows without the prior for its size.
* old layout: ``--old-n`` rows each with and without the prior, written as schema 3 wrote them
  (JSON ``scores_json`` / ``extra_json``) and read as the code before schema 4 did (every row a
  Prediction, then ``metrics.summarize``; export from the whole list). Its peak RSS grows with
  the row count, so it is measured on fewer rows; per-row figures compare directly.

The JSONL exports of the same rows from both layouts are compared byte for byte.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

RUN = "bench"
EXPORT_RUN = "bench-export"


def imagenet_names() -> list[str]:
    text = resources.files("vlmclf.data").joinpath("classnames/imagenet.json").read_text()
    return json.loads(text)


def token_counts(names: list[str]) -> list[int]:
    """Tokens per distinct name after a space, by the project's offline BPE tokenizer."""
    from vlmclf.models.random_tokenizer import build_tokenizer

    tokenizer = build_tokenizer("llama")
    return [len(tokenizer(" " + n, add_special_tokens=False).input_ids) for n in names]


class SyntheticRun:
    """Deterministic likelihood predictions for ImageNet's class list."""

    def __init__(self, prior: bool, counts: list[int], seed: int = 0) -> None:
        self.names = imagenet_names()
        self.distinct = list(dict.fromkeys(self.names))
        self.counts = np.array(counts)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.column = [self.distinct.index(n) for n in self.names]
        self.seed = seed
        self.prior = self._named(np.random.default_rng(seed + 1)) if prior else None

    def _named(self, rng: np.random.Generator) -> dict[str, list[float]]:
        flat = (-rng.gamma(1.5, 2.0, int(self.counts.sum()))).astype(np.float32).tolist()
        spans = zip(self.distinct, self.starts.tolist(), self.counts.tolist(), strict=True)
        return {n: flat[s : s + c] for n, s, c in spans}

    def prediction(self, i: int) -> Any:
        from vlmclf.records import Prediction

        rng = np.random.default_rng((self.seed, i))
        logprobs = self._named(rng)
        per_name = [math.fsum(v) for v in logprobs.values()]
        scores = [per_name[c] for c in self.column]
        pred = int(np.argmax(scores))
        label = int(rng.integers(len(self.names)))
        extra: dict[str, Any] = {"token_logprobs": logprobs, "agg": "sum", "cfg": None}
        if self.prior is not None:
            extra["cfg"], extra["image_free"] = 1.0, self.prior
        hit = self.names[pred] == self.names[label]
        return Prediction(f"ILSVRC2012_val_{i:08d}", label, scores=scores, pred=pred, hit=hit,
                          seconds=0.01, extra=extra)  # fmt: skip


def write_v3(path: Path, names: list[str], rows: Any) -> None:
    """Rows as schema 3 stored them: scores and extra as JSON text."""
    from vlmclf.store.json_safe import dumps
    from vlmclf.store.run_store import _SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, APPLICATION_ID

    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_SCHEMA_V1 + _SCHEMA_V2 + _SCHEMA_V3)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 3")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("INSERT INTO runs (run_id, spec_json, class_names_json, status, n_total,"
               " created_at, updated_at) VALUES (?, '{}', ?, 'done', 0, 't', 't')",
               (RUN, json.dumps(names)))  # fmt: skip
    seq = 0
    for batch in rows:
        db.execute("BEGIN IMMEDIATE")
        for p in batch:
            db.execute(
                "INSERT INTO predictions (run_id, example_id, seq, label, ok, error, text,"
                " scores_json, choices_json, pred, hit, seconds, extra_json, outcome, flag)"
                " VALUES (?, ?, ?, ?, 1, NULL, NULL, ?, NULL, ?, ?, ?, ?, 'answer', NULL)",
                (RUN, p.example_id, seq, p.label, dumps(p.scores), p.pred, int(p.hit),
                 p.seconds, dumps(p.extra)),
            )  # fmt: skip
            seq += 1
        db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def write_v4(path: Path, names: list[str], rows: Any) -> None:
    from vlmclf.store import RunStore

    with RunStore(path) as store:
        store.start_run(RUN, "{}", names, 0)
        for batch in rows:
            store.add_predictions(RUN, batch)
        store._query("PRAGMA wal_checkpoint(TRUNCATE)")


def phase_write(layout: str, path: Path, n: int, prior: bool) -> dict[str, Any]:
    """Write ``n`` rows in batches of 64; time only the store's part."""
    run = SyntheticRun(prior, json.loads((path.parent / "token_counts.json").read_text()))
    timed = {"s": 0.0}

    def batches() -> Any:
        for start in range(0, n, 64):
            batch = [run.prediction(i) for i in range(start, min(n, start + 64))]
            began = time.perf_counter()
            yield batch
            timed["s"] += time.perf_counter() - began

    (write_v3 if layout == "v3" else write_v4)(path, run.names, batches())
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return {"rows": n, "file_bytes": size, "bytes_per_prediction": round(size / n),
            "write_s": round(timed["s"], 2),
            "write_ms_per_row": round(1000 * timed["s"] / n, 3)}  # fmt: skip


def phase_summary(layout: str, path: Path) -> dict[str, Any]:
    from vlmclf.metrics import summarize
    from vlmclf.metrics.columnar import summarize_columns
    from vlmclf.store import RunStore

    began = time.perf_counter()
    with RunStore(path, read_only=True) as store:
        names = store.get_run(RUN).class_names
        if layout == "v3":  # as before schema 4: every row a Prediction, then summarize
            summary = summarize(store.predictions(RUN), names)
        else:
            summary = summarize_columns(store.column_chunks(RUN), names)
    return {"summary_s": round(time.perf_counter() - began, 2), "accuracy": summary["accuracy"],
            "top5": summary["top5"]}  # fmt: skip


def phase_export(layout: str, path: Path, out: Path, fmt: str) -> dict[str, Any]:
    from vlmclf.store import RunStore
    from vlmclf.store.export import write_jsonl, write_parquet

    began = time.perf_counter()
    with RunStore(path, read_only=True) as store:
        if layout == "v3":  # as before: the whole list, then the file
            writer = write_jsonl if fmt == "jsonl" else write_parquet
            count = writer(out, RUN, [store.predictions(RUN)])
        else:
            count = store.export(RUN, out, fmt)  # type: ignore[arg-type]
    return {f"export_{fmt}_s": round(time.perf_counter() - began, 2), "rows": count}


def run_phase(args: list[str]) -> dict[str, Any]:
    """One phase in a fresh child process; its result plus its own peak RSS."""
    done = subprocess.run([sys.executable, __file__, "--phase", *args], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"phase {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(argv: list[str]) -> None:
    kind, layout, path = argv[0], argv[1], Path(argv[2])
    if kind == "tokens":  # in a child, so that the parent stays small
        counts = token_counts(list(dict.fromkeys(imagenet_names())))
        path.write_text(json.dumps(counts))
        result: dict[str, Any] = {"tokens_per_name": float(np.mean(counts))}
    elif kind == "write":
        result = phase_write(layout, path, int(argv[3]), argv[4] == "prior")
    elif kind == "summary":
        result = phase_summary(layout, path)
    else:
        result = phase_export(layout, path, Path(argv[3]), argv[4])
    print(json.dumps({**result, "peak_rss_mb": round(peak_rss_bytes() / 2**20)}))


def peak_rss_bytes() -> int:
    """This process's peak RSS. Linux's VmHWM belongs to the process image, so it starts
    afresh at exec; ``ru_maxrss`` would carry the parent's peak over from the fork."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # elsewhere: best effort


def measure(n: int, old_n: int, export_n: int, folder: Path) -> dict[str, Any]:
    tokens = run_phase(["tokens", "-", str(folder / "token_counts.json")])
    out: dict[str, Any] = {
        "tokens_per_name": round(tokens["tokens_per_name"], 2), "n": n, "old_n": old_n,
        "export_n": export_n, "classes": 1000, "distinct_names": 998,
    }  # fmt: skip
    for layout, rows in (("new", n), ("old", old_n)):
        tag = "v4" if layout == "new" else "v3"
        main = folder / f"{layout}.db"
        result = {"with_prior": run_phase(["write", tag, str(main), str(rows), "prior"])}
        bare = folder / f"{layout}-bare.db"
        result["without_prior"] = run_phase(["write", tag, str(bare), str(old_n), "bare"])
        result["summary"] = run_phase(["summary", tag, str(main)])
        small = main if rows == export_n else folder / f"{layout}-export.db"
        if small != main:
            run_phase(["write", tag, str(small), str(export_n), "prior"])
        for fmt in ("jsonl", "parquet"):
            target = folder / f"{layout}.{fmt}"
            result[f"export_{fmt}"] = run_phase(["export", tag, str(small), str(target), fmt])
        out[layout] = result
    same = (folder / "new.jsonl").read_bytes() == (folder / "old.jsonl").read_bytes()
    out["jsonl_exports_identical"] = same
    new_size = out["new"]["with_prior"]["bytes_per_prediction"]
    old_size = out["old"]["with_prior"]["bytes_per_prediction"]
    out["size_ratio_old_over_new"] = round(old_size / new_size, 1)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--phase":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="rows in the new layout")
    parser.add_argument("--old-n", type=int, default=None,
                        help="rows in the old layout (default min(n, 2000))")  # fmt: skip
    parser.add_argument("--export-n", type=int, default=None,
                        help="rows exported from each layout (default min(n, 2000))")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: temp)")
    args = parser.parse_args()
    old_n = args.old_n or min(args.n, 2000)
    export_n = args.export_n or min(args.n, 2000)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = measure(args.n, old_n, export_n, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for layout in ("old", "new"):
        r = result[layout]
        print(f"{layout}: {r['with_prior']['bytes_per_prediction']} B/prediction, "
              f"summary of {r['with_prior']['rows']} rows {r['summary']['summary_s']} s "
              f"({r['summary']['peak_rss_mb']} MB peak)")  # fmt: skip


if __name__ == "__main__":
    main()
