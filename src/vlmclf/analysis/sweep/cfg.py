"""Choose the classifier-free-guidance weight t on a validation split, report test once.

Both splits are scored with the image-free term stored (cfg=1.0 stores it and leaves scores
unguided), so choosing t and re-scoring need no further model passes: t is picked by top-1 on
the validation predictions, then the test predictions are re-scored with it.
"""

from __future__ import annotations

from dataclasses import replace

from vlmclf.methods import make_method
from vlmclf.methods.likelihood.scores import rescore, sweep_cfg_predictions
from vlmclf.metrics import summarize
from vlmclf.run.distributed import is_main_process
from vlmclf.run.runner import RunConfig, RunResult, run
from vlmclf.spec import RunSpec
from vlmclf.store import RunStore


def run_cfg_sweep(
    spec: RunSpec, config: RunConfig, *, val_split: str, val_limit: int | None
) -> RunResult:
    """The test run re-scored with the t that did best on ``val_split``."""
    agg = str(spec.options.get("agg", "sum"))
    with_prior = spec.model_copy(update={"options": {**spec.options, "cfg": 1.0}})
    if val_split == (spec.split or ""):
        raise ValueError(f"--val-split {val_split!r} must differ from the evaluated split")
    validation = run(
        with_prior.model_copy(update={"split": val_split}),
        replace(config, limit=val_limit),
        make_method,
    )
    test = run(with_prior, config, make_method)
    if not is_main_process():  # under torchrun the main rank alone holds the predictions
        return test
    t = sweep_cfg_predictions(validation.predictions, validation.class_names, agg)
    rescored = rescore(test.predictions, test.class_names, agg, t)
    summary = summarize(rescored, test.class_names)
    summary.update(
        split=test.summary.get("split"),
        cfg_t=t,
        val_split=val_split,
        val_n=validation.summary["n"],
        unguided_accuracy=test.summary["accuracy"],
    )
    with RunStore(config.store_path) as store:
        store.save_analysis(
            "cfg_sweep",
            {
                "spec": spec.model_dump(exclude_defaults=True),
                "val_split": val_split,
                "val_limit": val_limit,
            },
            {"test_run_id": test.run_id, "val_run_id": validation.run_id, "summary": summary},
        )
    return replace(test, summary=summary, loaded=rescored)
