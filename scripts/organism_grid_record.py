"""Evaluate the shipped encoder-by-LLM grid and write the results into each cell's record.

For each ``organism:grid-*``: class-name likelihood with the paper protocol's answer prefix on
the first N Fashion-MNIST test images (the demo's run, through the project's runner), stored in
``training_record.json`` as ``evaluation`` (accuracy with its 95% interval, and on the tops and
the other classes) and ``check`` (the first images' predicted classes, which
tests/test_organism_grid.py reproduces offline).

With every cell run, it then prints the demo's finding 6 on those images (the same function the
demo calls), so the finding can be checked on a machine too busy for the whole demo.

    python scripts/organism_grid_record.py [--n 200] [--store /tmp/grid.sqlite] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from vlmclf.methods import make_method
from vlmclf.metrics import bootstrap_ci
from vlmclf.organism.grid import CHECK_IMAGES, FASHION_TOPS
from vlmclf.organism.load import GRID, RECORD_FILE, default_weights_dir
from vlmclf.run.runner import RunConfig, run
from vlmclf.spec import RunSpec


def grid_spec(name: str) -> RunSpec:
    from vlmclf.paper.protocols import resolve

    prefix = resolve("paper", "likelihood")["answer_prefix"]
    return RunSpec(model=f"organism:{name}", dataset="fashion_mnist", method="likelihood",
                   options={"answer_prefix": prefix})  # fmt: skip


def evaluation(result, n: int) -> dict:
    """Accuracy overall, on the tops and on the rest, from a run's predictions."""
    names = result.class_names
    ok = [p for p in result.predictions if p.ok]
    hits = [float(bool(p.hit)) for p in ok]
    tops = [float(bool(p.hit)) for p in ok if names[p.label] in FASHION_TOPS]
    rest = [float(bool(p.hit)) for p in ok if names[p.label] not in FASHION_TOPS]
    low, high = bootstrap_ci(hits)
    return {
        "spec": "likelihood, paper answer prefix, fashion_mnist test (the runner's first images)",
        "limit": n, "n": len(hits), "accuracy": round(sum(hits) / len(hits), 4),
        "ci95": [round(low, 4), round(high, 4)],
        "accuracy_tops": round(sum(tops) / len(tops), 4), "n_tops": len(tops),
        "accuracy_rest": round(sum(rest) / len(rest), 4), "n_rest": len(rest),
        "run_id": result.run_id,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("names", nargs="*", help="grid cells (default: all)")
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp()) / "grid.sqlite"
    results = {}
    for name in args.names or GRID:
        result = run(grid_spec(name), RunConfig(store_path=store, limit=args.n), make_method)
        config = RunConfig(store_path=store, limit=CHECK_IMAGES)  # its own sample, not a prefix
        first = run(grid_spec(name), config, make_method).predictions
        path = default_weights_dir(name) / RECORD_FILE
        record = json.loads(path.read_text())
        record["evaluation"] = evaluation(result, args.n)
        record["check"] = {
            "limit": CHECK_IMAGES,
            "example_ids": [p.example_id for p in first],
            "preds": [p.pred for p in first],
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(name, json.dumps(record["evaluation"]))
        results[result.spec.model] = result
    if len(results) == len(GRID):
        print_finding_6(results)


def print_finding_6(results: dict) -> None:
    from vlmclf.analysis.demo.grid import encoder_vs_llm, grid_columns

    names = next(iter(results.values())).class_names
    columns, labels = grid_columns({m: r.predictions for m, r in results.items()}, names)
    finding = encoder_vs_llm(columns, labels, names)
    print(f"(6) {finding['finding']}: {finding['verdict']}")
    print(f"    {finding['evidence']}")
    for sentence in finding["details"]["attribute"]["verdicts"]:
        print(f"    * {sentence}")


if __name__ == "__main__":
    main()
