"""The vlmclf CLI with two knobs the distributed tests need, set through the environment:
``VLMCLF_TEST_SLEEP_S`` (each model call sleeps first, so that a kill lands part-way) and
``VLMCLF_TEST_FAIL_RANK`` (the method raises on that rank), ``VLMCLF_TEST_FAIL_BUILD_RANK``
(building the method raises on that rank, as a model that fails to load),
``VLMCLF_TEST_FAIL_FEATURES_RANK`` (probe feature extraction raises on that rank) and
``VLMCLF_TEST_FAIL_LOSS_RANK`` (a fine-tuning forward pass raises on that rank). Launched by
torchrun as a script."""

from __future__ import annotations

import os
import time

import vlmclf.analysis.probe.features as features
import vlmclf.methods as methods
from vlmclf.analysis.finetune.model import HFTrainable
from vlmclf.cli import app

PLANNED_FAILURE = "planned failure in predict"
PLANNED_BUILD_FAILURE = "planned failure in make_method"
PLANNED_FEATURE_FAILURE = "planned failure in features_of_batch"
PLANNED_LOSS_FAILURE = "planned failure in batch_loss"
_real_make_method = methods.make_method
_real_features_of_batch = features.features_of_batch
_real_batch_loss = HFTrainable.batch_loss


def _this_rank_fails(variable: str) -> bool:
    return os.environ.get("RANK", "0") == os.environ.get(variable)


def make_method(model: object, class_names: list[str], spec: object) -> object:
    if os.environ.get("RANK", "0") == os.environ.get("VLMCLF_TEST_FAIL_BUILD_RANK"):
        raise ValueError(PLANNED_BUILD_FAILURE)
    method = _real_make_method(model, class_names, spec)
    predict = method.predict

    def slow_or_failing(batch: list) -> list:
        if os.environ.get("RANK", "0") == os.environ.get("VLMCLF_TEST_FAIL_RANK"):
            raise ValueError(PLANNED_FAILURE)
        time.sleep(float(os.environ.get("VLMCLF_TEST_SLEEP_S", "0")))
        return predict(batch)

    method.predict = slow_or_failing
    return method


def features_of_batch(*args: object, **kwargs: object) -> object:
    if _this_rank_fails("VLMCLF_TEST_FAIL_FEATURES_RANK"):
        raise ValueError(PLANNED_FEATURE_FAILURE)
    return _real_features_of_batch(*args, **kwargs)


def batch_loss(self: HFTrainable, *args: object) -> object:
    if _this_rank_fails("VLMCLF_TEST_FAIL_LOSS_RANK"):
        raise ValueError(PLANNED_LOSS_FAILURE)
    return _real_batch_loss(self, *args)


methods.make_method = make_method  # the CLI imports it when the command runs
features.features_of_batch = features_of_batch  # extract_part looks it up when it runs
HFTrainable.batch_loss = batch_loss  # type: ignore[method-assign]

if __name__ == "__main__":
    app(prog_name="vlmclf")
