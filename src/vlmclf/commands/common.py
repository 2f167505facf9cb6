"""What every command shares: the default store, error exit, output folders, and the one
place where store problems and data warnings become a line on stderr."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from vlmclf.terminal import safe_log_output, terminal_safe

DEFAULT_STORE = Path("vlmclf-runs.sqlite")
TORCHRUN_COMMANDS = ("eval", "sweep", "wikiqa", "probe", "finetune")
"""Commands that shard their work across torchrun's ranks; the others refuse to run under it."""
REPORTS_DIR = Path("reports")


def one_line(message: str) -> str:
    """A library's multi-line message (transformers' hub errors) as one line."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


class CommandError(Exception):
    """A command's one-line error, raised instead of printed when the Python API calls the
    command's functions (``errors_raise``): ``code`` is the exit status the CLI would give."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


_ERRORS_RAISE = contextvars.ContextVar("errors_raise", default=False)


@contextlib.contextmanager
def errors_raise() -> Iterator[None]:
    """Within, ``fail`` raises CommandError instead of printing and exiting: the Python API
    shares the commands' checks and gives their messages to its caller as exceptions."""
    token = _ERRORS_RAISE.set(True)
    try:
        yield
    finally:
        _ERRORS_RAISE.reset(token)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear error on stderr and exit with ``code`` (raise CommandError inside
    ``errors_raise``); what the message quotes (a server's body, a file's field) cannot drive
    the terminal, nor break the one line."""
    message = one_line(message)
    if _ERRORS_RAISE.get():
        raise CommandError(message, code)
    typer.echo(f"error: {terminal_safe(message, one_line=True)}", err=True)
    raise typer.Exit(code)


def require_store(store: Path) -> None:
    """A command that reads stored runs stops in one line when there is no store to read."""
    if not store.exists():
        fail(f"no store at {store} (run `vlmclf eval` first or pass --store)")


def renamed(old: str, old_value: Any, new: str, new_value: Any) -> Any:
    """The value of an option given by its new name or, for one release, by its old one (with a
    deprecation warning); both at once is an error. ``None`` means "not given"."""
    if old_value is None:
        return new_value
    if new_value is not None:
        fail(f"{old} is the old name of {new}: give {new} only")
    warn_deprecated(f"{old} is deprecated and goes in the next release; use {new}")
    return old_value


def warn_deprecated(message: str) -> None:
    """One ``warning:`` line on stderr for a spelling that still works for one release."""
    typer.echo(f"warning: {message}", err=True)


def out_folder(help: str) -> Any:
    """``--out``: a folder in every command (a command that writes one file names it with
    ``--out-file``), so an existing file given as ``--out`` is refused before any work."""
    return typer.Option("--out", help=help, file_okay=False)


def old_out_file() -> Any:
    """``--out`` kept for one release on the commands that write one file: their old name of
    ``--out-file`` (they have no folder for ``--out`` to mean)."""
    return typer.Option("--out", hidden=True, help="Old name of --out-file.")


def required(name: str, value: Any) -> Any:
    """An option that is required once its old spelling has been taken into account."""
    if value is None:
        fail(f"Missing option '{name}'.")
    return value


SEED_MAX = 2**32 - 1
"""numpy's RandomState takes seeds in [0, 2**32 - 1]."""


def number_in(
    low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> Callable[[float | None], float | None]:
    """An option callback: the value (None passes) must be finite and within [low, high]
    (``low_open``: strictly above ``low``). Typer reports it as "Invalid value for '--x': ..."
    with exit 2, naming the option; the message names the accepted range."""
    accepted = _range_words(low, high, low_open)

    def check(value: float | None) -> float | None:
        if value is None:
            return None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if not math.isfinite(value) or too_low or too_high:
            raise typer.BadParameter(f"must be {accepted}, got {value}")
        return value

    return check


def at_least(low: float) -> Callable[[float | None], float | None]:
    return number_in(low)


def finite_number(value: float | None) -> float | None:
    """An option callback for a float with no bounds: NaN and infinities are refused."""
    return number_in()(value)


def _range_words(low: float | None, high: float | None, low_open: bool) -> str:
    if low is None and high is None:
        return "a finite number"
    if high is None:
        return f"{'>' if low_open else '>='} {_number(low)}"
    if low is None:
        return f"<= {_number(high)}"
    return f"in {'(' if low_open else '['}{_number(low)}, {_number(high)}]"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def batch_size_or_auto(value: str) -> str:
    """An option callback for ``--batch-size``: ``auto`` or a whole number >= 1."""
    from vlmclf.run.batching import parse_batch_size

    try:
        return parse_batch_size(value)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


THREADS_HELP = "CPU threads torch computes with (default: what torch picks); recorded with the run."


def use_threads(requested: int | None) -> int:
    """Cap torch's CPU threads for this process (``--threads``); returns the count in use."""
    from vlmclf.run.runner import cpu_threads

    return cpu_threads(requested)


DEVICE_HELP = (
    "auto (CUDA, then MPS, else CPU; cuda:LOCAL_RANK under torchrun), cpu, cuda, cuda:N, mps."
)
DTYPE_HELP = "auto (the checkpoint's own on a GPU, float32 on CPU), float32, float16, bfloat16."


def batch_help(cpu_default: int, what: str = "Examples per model call") -> str:
    from vlmclf.run.batching import CUDA_AUTO_BATCH

    return (f"{what}: a number, or auto ({cpu_default} on CPU and MPS; on CUDA the largest "
            f"that fits, from {CUDA_AUTO_BATCH} down).")  # fmt: skip


def resolve_hardware(
    model: str | None, device: str, dtype: str, *, training: bool = False
) -> tuple[str, str]:
    """(device, dtype) with ``auto`` resolved, or a one-line error and exit 2. Without a
    ``model`` (several models, each resolved in its turn) the dtype is only checked."""
    from vlmclf.run.loading import parse_dtype, resolve_device, resolve_dtype

    try:
        resolved = resolve_device(device)
        if model is None:
            return resolved, parse_dtype(dtype)
        return resolved, resolve_dtype(dtype, model, resolved, training=training)
    except ValueError as err:
        fail(str(err))


def resolve_batch(requested: str, device: str, cpu_default: int) -> int:
    """``--batch-size`` as the int the runner uses (see ``vlmclf.run.batching``)."""
    from vlmclf.run.batching import resolve_batch_size

    return resolve_batch_size(requested, device, cpu_default)


def write_stored_run_files(
    out_dir: Path, store: Path, run_ids: list[str], *, data_root: str | None,
    classes: str | None, log_samples: bool,
) -> list[Path]:  # fmt: skip
    """``--output-path`` for commands that run several stored runs (sweep): each run's results
    JSON (and samples JSONL), as ``eval`` writes them. One error line (exit 1) if they cannot be
    written: the runs are stored."""
    from vlmclf.report.summary import summary_json
    from vlmclf.run.results import StoredPredictions
    from vlmclf.run.run_files import write_run_files
    from vlmclf.spec import RunSpec
    from vlmclf.store import RunStore

    written: list[Path] = []
    try:
        for run_id in dict.fromkeys(run_ids):
            with RunStore(store, read_only=True) as runs:
                record = runs.get_run(run_id)
            if record is None or "summary" not in (record.meta or {}):
                continue
            spec = RunSpec.model_validate(record.spec)
            summary = summary_json(run_id, spec, record.meta["summary"], str(store))
            stored = StoredPredictions(store, run_id, spec, record.class_names)
            written += write_run_files(out_dir, summary, stored, data_root=data_root,
                                       classes=classes, log_samples=log_samples)  # fmt: skip
    except (OSError, ValueError) as err:
        fail(f"--output-path {out_dir}: {err} (the runs are stored: re-run to write the files)",
             code=1)  # fmt: skip
    return written


OUTPUT_PATH_HELP = (
    "Also write results_<id>.json here (id: the run's or the analysis's): summary, identity, "
    "protocol, versions, threads, git revision."
)


def write_analysis_output(
    out_dir: Path | None, store: Path, analysis_id: str, *, protocol: dict[str, Any] | None,
    samples: Iterable[dict[str, Any]] | None = None,
) -> list[Path]:  # fmt: skip
    """``--output-path`` for an analysis (probe, finetune, frequency): its results JSON (and
    samples JSONL) as ``eval`` writes a run's. One error line (exit 1) if they cannot be
    written: the analysis is stored."""
    if out_dir is None:
        return []
    from vlmclf.run.run_files import write_analysis_files

    try:
        return write_analysis_files(out_dir, store, analysis_id, protocol=protocol,
                                    samples=samples)  # fmt: skip
    except (OSError, ValueError) as err:
        fail(f"--output-path {out_dir}: {err} (the analysis is stored: re-run to write the "
             "files)", code=1)  # fmt: skip


def check_output_dir(out_dir: Path | None, log_samples: bool) -> None:
    """``--output-path`` writable before any work; ``--log-samples`` only with it."""
    if log_samples and out_dir is None:
        fail("--log-samples writes into --output-path DIR: give both")
    if out_dir is None:
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".vlmclf-write-check-{os.getpid()}"  # torchrun's ranks at once
        probe.touch()
        probe.unlink()
    except OSError as err:
        fail(f"--output-path {out_dir}: {err.strerror or err}")


def out_dir_for(command: str, spec: dict[str, Any]) -> Path:
    """``reports/<command>-<hash of spec>``: the same analysis writes to the same folder."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    return REPORTS_DIR / f"{command}-{digest[:10]}"


def _print_version(asked: bool) -> None:
    if asked:
        from vlmclf import __version__

        typer.echo(f"vlmclf {__version__}")
        raise typer.Exit()


def version_option(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version,
        help="Print vlmclf's version and exit.",
    ),
) -> None:  # fmt: skip
    """Evaluate vision-language models as image classifiers, side by side with CLIP."""


class CleanErrorsGroup(TyperGroup):
    """The root command group: a store problem in any command (not a store, corrupt, newer
    schema, damaged, read-only, disk full, missing) is one ``error:`` line and exit 2, and a
    DataWarning is one ``warning:`` line, instead of a traceback or Python's warning format."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Flags shown without a value placeholder, and a usage error (unknown option, bad
        value, missing option) as one ``error:`` line with exit status 2, like every other
        error of ours, instead of Typer's box."""
        _flags_take_no_metavar(self)
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        return _exit_like_a_command(lambda: super(CleanErrorsGroup, self).main(
            *args, standalone_mode=False, **kwargs))  # fmt: skip

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        _refuse_torchrun_unless_sharded(name)
        return name, command, rest

    def invoke(self, ctx: Any) -> Any:
        from vlmclf.run.distributed import RankFailed, is_main_process
        from vlmclf.run.interrupts import SIGTERM_EXIT_CODE, Terminated
        from vlmclf.store import RunBusyError, StoreError

        main = is_main_process()  # under torchrun only the main rank prints results
        safe_log_output()  # vlmclf's log warnings quote servers and clients: escaped
        with warnings.catch_warnings(), _stdout_of_main_rank_only(main):
            _print_data_warnings_plainly(main)
            try:
                return super().invoke(ctx)
            except RankFailed as err:  # a rank failed: the main rank says which, once
                if err.quiet:
                    raise typer.Exit(1) from None
                fail(str(err), 1)
            except RunBusyError as err:  # another process computes this run: not twice
                fail(str(err), RunBusyError.exit_code)
            except StoreError as err:
                fail(str(err))
            except Terminated:
                if not main:  # torchrun stops every rank: the main rank says it once
                    raise typer.Exit(SIGTERM_EXIT_CODE) from None
                fail(
                    "terminated (SIGTERM); stored rows are kept, re-run to resume",
                    SIGTERM_EXIT_CODE,
                )


def _flags_take_no_metavar(command: Any) -> None:
    """``--json``, ``--progress/--no-progress``, ``--help`` take no value: show no ``<bool>``
    for them, in this command and every one under it."""
    for sub in getattr(command, "commands", {}).values():
        _flags_take_no_metavar(sub)
    for param in getattr(command, "params", []):
        _no_metavar_if_flag(param)
    make_help = command.get_help_option
    if getattr(make_help, "without_metavar", False):
        return

    def help_option(ctx: Any) -> Any:
        return _no_metavar_if_flag(make_help(ctx))

    help_option.without_metavar = True  # type: ignore[attr-defined]
    command.get_help_option = help_option


def _no_metavar_if_flag(param: Any) -> Any:
    if getattr(param, "is_flag", False) and param.metavar is None:
        param.metavar = ""
    return param


def _click_exceptions() -> Any:
    """The exceptions of the click that Typer runs on: its own copy since Typer 0.2x."""
    try:
        from typer._click import exceptions
    except ImportError:  # an older Typer on the click package
        from click import exceptions
    return exceptions


def _exit_like_a_command(main: Callable[[], Any]) -> NoReturn:
    """Run click's main without its own exit handling; usage errors become ``fail``'s line."""
    import sys

    errors = _click_exceptions()
    try:
        code = main()
    except errors.NoArgsIsHelpError as err:  # bare `vlmclf`: the help, as before
        err.show()
        sys.exit(err.exit_code)
    except errors.UsageError as err:
        where = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
        typer.echo(f"error: {one_line(err.format_message())}{where}", err=True)
        sys.exit(err.exit_code)
    except errors.ClickException as err:
        typer.echo(f"error: {one_line(err.format_message())}", err=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _refuse_torchrun_unless_sharded(name: str | None) -> None:
    """A command that does not shard would run N times over and write N times: refuse it."""
    from vlmclf.run.distributed import is_distributed, is_main_process

    if name is None or not is_distributed():
        return
    if name in TORCHRUN_COMMANDS:
        from vlmclf.run.launcher_watch import stop_with_launcher

        stop_with_launcher()  # from the start: a rank whose launcher died stops too
        return
    if not is_main_process():
        raise typer.Exit(2)
    fail(f"`vlmclf {name}` does not run under torchrun (only {', '.join(TORCHRUN_COMMANDS)} "
         "shard their work); run it as one process")  # fmt: skip


@contextlib.contextmanager
def _stdout_of_main_rank_only(main: bool) -> Iterator[None]:
    """Off the main rank of a torchrun job, standard output goes nowhere (errors still show)."""
    if main:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _print_data_warnings_plainly(main: bool = True) -> None:
    from vlmclf.data.label_check import DataWarning

    if not main:  # every rank reads the same data: the main rank warns for all
        warnings.simplefilter("ignore", DataWarning)
        return

    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DataWarning):
            typer.echo(f"warning: {terminal_safe(message)}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    warnings.simplefilter("always", DataWarning)
