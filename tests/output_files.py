"""What ``--output-path`` must leave: exactly one results JSON and one samples log per id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_output_files(out: Path, result_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The results JSON and the samples log's lines of run or analysis ``result_id``, after
    checking that the folder holds those two files and nothing else."""
    results, samples = out / f"results_{result_id}.json", out / f"samples_{result_id}.jsonl"
    assert sorted(p.name for p in out.iterdir()) == [results.name, samples.name]
    lines = samples.read_text().splitlines()
    return json.loads(results.read_text()), [json.loads(line) for line in lines]
