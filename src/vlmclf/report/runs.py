"""Rows describing stored runs, for `vlmclf results`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmclf.store import RunStore


def runs_rows(store_path: Path) -> list[dict[str, Any]]:
    """One row per run: what was run, its status and its headline metrics."""
    with RunStore(store_path, read_only=True) as store:
        records = store.list_runs()
    rows = []
    for record in records:
        spec = record.spec
        summary = (record.meta or {}).get("summary", {})
        ci = summary.get("ci95") or [None, None]
        rows.append(
            {
                "run_id": record.run_id,
                "model": spec.get("model"),
                "dataset": spec.get("dataset") + (f":{spec['split']}" if spec.get("split") else ""),
                "method": spec.get("method")
                + (f"/{spec['setting']}" if spec.get("setting") else ""),
                "k": spec.get("k"),
                "status": record.status,
                "n": summary.get("n", record.n_done),
                "failed": summary.get("n_failed", record.n_failed),
                "accuracy": summary.get("accuracy"),
                "ci_low": ci[0],
                "ci_high": ci[1],
                "strict": summary.get("strict_accuracy"),
                "top5": summary.get("top5"),
                "seconds": round(record.elapsed_s or 0.0, 1),
            }
        )
    return rows


def resolve_run_id(store: RunStore, prefix: str) -> str:
    """The full id of the one run whose id starts with ``prefix``."""
    matches = [r.run_id for r in store.list_runs() if r.run_id.startswith(prefix)]
    if not matches:
        raise ValueError(f"no run id starts with {prefix!r} (see `vlmclf results`)")
    if len(matches) > 1:
        raise ValueError(f"run id prefix {prefix!r} is ambiguous: {', '.join(matches)}")
    return matches[0]
