"""Rows describing stored runs, for `vlmclf results`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vlmclf.store import RunRecord, RunStore


def runs_rows(store_path: Path, with_identity: bool = False) -> list[dict[str, Any]]:
    """One row per run: what was run, its status and its headline metrics; ``with_identity``
    adds what the run id hashes (the resolved prompt, fingerprints; None for a run stored
    before content identities) and the environment it ran in."""
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
                "settings": run_settings(spec),
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
        if with_identity:
            rows[-1].update(_identity_fields(record))
    return rows


SHOWN_APART = frozenset({"model", "dataset", "split", "method", "setting", "k"})
"""Spec fields that have their own column in ``vlmclf results``."""


def run_settings(spec: dict[str, Any]) -> str:
    """Every other setting the run's spec holds (defaults are not stored), as ``key=value``:
    what tells apart runs that differ only by protocol, prompt, answer prefix, order, CoT..."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "options" and isinstance(value, dict):
            flat.update(value)
        elif key not in SHOWN_APART:
            flat[key] = value
    return " ".join(f"{key}={_setting_text(flat[key])}" for key in sorted(flat))


def _setting_text(value: Any) -> str:
    """Plain words as they are; text with spaces, quotes or nothing at all quoted."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return text if re.fullmatch(r"[\w.:/+-]+", text) else json.dumps(text)


def _identity_fields(record: RunRecord) -> dict[str, Any]:
    meta = record.meta or {}
    return {
        "n_transient": record.n_transient,
        "provisional": bool(record.n_transient),
        "denominator": meta.get("summary", {}).get("denominator"),
        "resolved_prompt": meta.get("resolved_prompt"),
        "identity": record.identity,
        "legacy_identity": record.identity is None,
        "environment": meta.get("environment"),
        "environment_last": meta.get("environment_last"),
        "threads": record.threads,
    }


def resolve_run_id(store: RunStore, prefix: str) -> str:
    """The full id of the one run whose id starts with ``prefix``."""
    matches = [r.run_id for r in store.list_runs() if r.run_id.startswith(prefix)]
    if not matches:
        raise ValueError(f"no run id starts with {prefix!r} (see `vlmclf results`)")
    if len(matches) > 1:
        raise ValueError(f"run id prefix {prefix!r} is ambiguous: {', '.join(matches)}")
    return matches[0]
