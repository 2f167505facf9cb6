"""What every command shares: the default store, error exit, output folders, and the one
place where store problems and data warnings become a line on stderr."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

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


class CleanErrorsGroup(TyperGroup):
    """The root command group: a store problem in any command (not a store, corrupt, newer
    schema, damaged, read-only, disk full, missing) is one ``error:`` line and exit 2, and a
    DataWarning is one ``warning:`` line, instead of a traceback or Python's warning format."""

    def invoke(self, ctx: Any) -> Any:
        from vlmclf.interrupts import SIGTERM_EXIT_CODE, Terminated
        from vlmclf.store import StoreError

        with warnings.catch_warnings():
            _print_data_warnings_plainly()
            try:
                return super().invoke(ctx)
            except StoreError as err:
                fail(str(err))
            except Terminated:
                fail(
                    "terminated (SIGTERM); stored rows are kept, re-run to resume",
                    SIGTERM_EXIT_CODE,
                )


def _print_data_warnings_plainly() -> None:
    from vlmclf.data.label_check import DataWarning

    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DataWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    warnings.simplefilter("always", DataWarning)
