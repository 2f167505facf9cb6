"""What every command shares: the default store, error exit, output folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, NoReturn

import typer

DEFAULT_STORE = Path("vlmclf-runs.sqlite")
REPORTS_DIR = Path("reports")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear error on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def out_dir_for(command: str, spec: dict[str, Any]) -> Path:
    """``reports/<command>-<hash of spec>``: the same analysis writes to the same folder."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    return REPORTS_DIR / f"{command}-{digest[:10]}"
