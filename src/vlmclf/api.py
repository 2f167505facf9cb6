"""The Python API: ``vlmclf.evaluate`` and the loaders, for notebooks and scripts.

``evaluate(model=..., dataset=..., method=..., store=..., **options)`` takes the options of
``vlmclf eval`` by their Python names (``max_new_tokens=8``, ``limit=100``) with the same
defaults and checks: both read the one definition, ``eval_command``'s signature, and both run
through ``EvalOptions.from_params`` -> ``run_plan`` -> ``run_eval``. A run asked from Python and
the same run asked from the CLI get the same run id and share stored predictions.

A bad option raises ``CommandError`` with the CLI's one-line message (``code`` is the CLI's exit
status); an unknown option name raises ``TypeError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmclf.commands.common import DEFAULT_STORE, CommandError, errors_raise

# as in the CLI: our progress bar says what is happening; transformers' weight-loading bars
# are noise
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

if TYPE_CHECKING:
    import pandas as pd

    from vlmclf.data.types import Dataset
    from vlmclf.records import Prediction
    from vlmclf.run.results import StoredPredictions
    from vlmclf.spec import RunSpec
    from vlmclf.store import RunStore

__all__ = ["CommandError", "Result", "evaluate", "load_dataset", "load_model", "open_store"]


@dataclass
class Result:
    """One evaluated run: ``summary`` is the dict ``vlmclf eval --json`` prints; the predictions
    stay in the store and are read by ``predictions()``."""

    run_id: str
    spec: RunSpec
    summary: dict[str, Any]
    class_names: list[str]
    store: Path
    stored: StoredPredictions = field(repr=False)
    data_root: str | None = field(default=None, repr=False)
    classes: str | None = field(default=None, repr=False)

    def predictions(self) -> pd.DataFrame:
        """One row per example: every stored field, the class names of ``label`` and ``pred``,
        and the image's path (``image``; None where the dataset no longer lists the example)."""
        import pandas as pd

        sources = self._sources()
        rows = [self._row(p, sources) for p in self._stored_predictions()]
        columns = ["run_id", "example_id", "image", "label", "label_name", "pred", "pred_name",
                   *(name for name in _PREDICTION_FIELDS if name not in _LEADING)]  # fmt: skip
        frame = pd.DataFrame(rows, columns=columns)
        return frame.astype({"pred": "Int64"})  # no prediction: <NA>, not a float column

    def report(self, out: str | Path = "report.html") -> Path:
        """This run's HTML report (``vlmclf report --runs RUN``), with the stored analyses."""
        import vlmclf.analysis.views  # noqa: F401 - registers every analysis with the report
        from vlmclf.report.html import write_report

        return write_report(Path(out), self.store, [self.run_id])

    def _stored_predictions(self) -> Iterator[Prediction]:
        for chunk in self.stored.prediction_chunks():
            yield from chunk

    def _sources(self) -> dict[str, str]:
        from vlmclf.run.run_files import example_sources

        return example_sources(self.spec, self.data_root, self.classes)

    def _row(self, p: Prediction, sources: dict[str, str]) -> dict[str, Any]:
        names = self.class_names
        return {
            "run_id": self.run_id,
            "image": sources.get(p.example_id),
            "label_name": names[p.label],
            "pred_name": None if p.pred is None else names[p.pred],
            **{name: getattr(p, name) for name in _PREDICTION_FIELDS},
        }


def _prediction_fields() -> tuple[str, ...]:
    from vlmclf.records import Prediction

    return tuple(f.name for f in fields(Prediction))


_PREDICTION_FIELDS = _prediction_fields()
_LEADING = ("example_id", "label", "pred")


def evaluate(
    model: str, dataset: str, method: str, store: str | Path = DEFAULT_STORE, **options: Any
) -> Result:
    """Classify ``dataset`` with ``model`` by ``method`` and store every prediction, exactly as
    ``vlmclf eval`` does (re-running resumes). ``options`` are eval's other options by their
    Python names, with its defaults (``protocol="clean"``, ``match="contain"``, ...)."""
    from vlmclf.commands.eval import (
        EvalOptions,
        checked_plan,
        eval_params,
        run_eval,
        write_output_files,
    )

    given = {"model": model, "dataset": dataset, "method": method, "store": store, **options}
    with errors_raise():
        params = eval_params(given)
        chosen = EvalOptions.from_params(params, explicit=set(given))
        spec, config = checked_plan(chosen)
        run = run_eval(spec, config, chosen)
        write_output_files(run, spec, config, chosen.output)
    return Result(
        run_id=run.run_id, spec=spec, summary=_summary(run.run_id, spec, run.summary, config),
        class_names=run.class_names, store=Path(config.store_path), stored=run.stored,
        data_root=config.data_root, classes=config.classes,
    )  # fmt: skip


def _summary(run_id: str, spec: RunSpec, summary: dict, config: Any) -> dict[str, Any]:
    from vlmclf.report.summary import summary_json

    return summary_json(run_id, spec, summary, str(config.store_path))


def load_model(spec: str, **options: Any) -> object:
    """The model a spec names (``hf:``, ``random:``, ``open_clip:``, ``openai:`` ...), loaded as
    ``evaluate`` would: ``device``/``dtype`` default to ``auto``; other keywords are
    ``ModelOptions``' fields (``base_url``, ``trust_remote_code``, ``seed``...)."""
    from vlmclf.commands.common import resolve_hardware
    from vlmclf.run.loading import ModelOptions, load_any_model

    with errors_raise():
        device, dtype = resolve_hardware(spec, options.pop("device", "auto"),
                                         options.pop("dtype", "auto"))  # fmt: skip
        return load_any_model(spec, ModelOptions(device=device, dtype=dtype, **options))


def load_dataset(
    spec: str, *, data_root: str | None = None, split: str | None = None, classes: str | None = None
) -> Dataset:
    """A dataset as ``--dataset``/``--data-root``/``--split``/``--classes`` name it: its class
    names and examples (each with ``source``, the image path, decoded only by ``load()``)."""
    from vlmclf.data import load_dataset as read_dataset

    return read_dataset(spec, data_root=data_root, split=split, classes=classes)


def open_store(path: str | Path = DEFAULT_STORE, *, read_only: bool = True) -> RunStore:
    """The run store at ``path`` (read-only unless asked: a mistyped path is an error, not a
    new empty store); use it as a context manager."""
    from vlmclf.store import RunStore

    return RunStore(path, read_only=read_only)

