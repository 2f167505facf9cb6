"""Evaluate the shipped encoder-by-LLM grid and record the results beside its cells.

For each ``organism:grid-*``: open-world generation on the first N Fashion-MNIST test images
(the demo's run, through the project's runner, scored by containment), written to
``weights/grid/evaluation.json`` as ``evaluation`` (accuracy with its 95% interval, and on the
tops and the other classes) and ``check`` (the first images' answers and predicted classes,
which tests/test_organism_grid.py reproduces offline).

With every cell run, it then prints the demo's finding 6 on those images (the same function the
demo calls), so the finding can be checked on a machine too busy for the whole demo.

    python scripts/organism_grid_record.py [--n 200] [--store /tmp/grid.sqlite]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from vlmclf.methods import make_method
from vlmclf.metrics import bootstrap_ci
from vlmclf.organism.grid import CHECK_IMAGES, EVALUATION_FILE, FASHION_TOPS
from vlmclf.organism.load import GRID
from vlmclf.run.runner import RunConfig, RunResult, run
from vlmclf.spec import RunSpec


def grid_spec(name: str) -> RunSpec:
    """The demo's run of a grid cell."""
    return RunSpec(model=f"organism:{name}", dataset="fashion_mnist", method="generate",
                   setting="open")  # fmt: skip


def evaluation(result: RunResult, n: int) -> dict[str, Any]:
    """Accuracy overall, on the tops and on the rest, from a run's predictions."""
    names = result.class_names
    ok = [p for p in result.predictions if p.ok]
    hits = [float(bool(p.hit)) for p in ok]
    tops = [float(bool(p.hit)) for p in ok if names[p.label] in FASHION_TOPS]
    rest = [float(bool(p.hit)) for p in ok if names[p.label] not in FASHION_TOPS]
    low, high = bootstrap_ci(hits)
    return {
        "spec": "open-world generation, containment, fashion_mnist test "
                "(the runner's first images)",
        "limit": n, "n": len(hits), "accuracy": round(sum(hits) / len(hits), 4),
        "ci95": [round(low, 4), round(high, 4)],
        "accuracy_tops": round(sum(tops) / len(tops), 4), "n_tops": len(tops),
        "accuracy_rest": round(sum(rest) / len(rest), 4), "n_rest": len(rest),
    }  # fmt: skip


def record_cell(name: str, store: Path, n: int) -> tuple[RunResult, dict[str, Any]]:
    """A cell's accuracy on the first ``n`` images and its answers on the check's own sample
    (the runner's ``--limit`` sample, not a prefix of the ``n``)."""
    result = run(grid_spec(name), RunConfig(store_path=store, limit=n), make_method)
    first = run(grid_spec(name), RunConfig(store_path=store, limit=CHECK_IMAGES), make_method)
    entry = {
        "evaluation": evaluation(result, n),
        "check": {
            "limit": CHECK_IMAGES,
            "example_ids": [p.example_id for p in first.predictions],
            "answers": [p.text for p in first.predictions],
            "preds": [p.pred for p in first.predictions],
        },
    }
    return result, entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--store", type=Path, default=None)
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp()) / "grid.sqlite"
    results, entries = {}, {}
    for name in GRID:
        result, entries[name] = record_cell(name, store, args.n)
        print(name, json.dumps(entries[name]["evaluation"]), flush=True)
        results[result.spec.model] = result
    EVALUATION_FILE.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
    print_finding_6(results)


def print_finding_6(results: dict[str, RunResult]) -> None:
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
