"""The vlmclf CLI with two knobs the distributed tests need, set through the environment:
``VLMCLF_TEST_SLEEP_S`` (each model call sleeps first, so that a kill lands part-way) and
``VLMCLF_TEST_FAIL_RANK`` (the method raises on that rank), ``VLMCLF_TEST_FAIL_BUILD_RANK``
(building the method raises on that rank, as a model that fails to load). Launched by torchrun
as a script."""

from __future__ import annotations

import os
import time

import vlmclf.methods as methods
from vlmclf.cli import app

PLANNED_FAILURE = "planned failure in predict"
PLANNED_BUILD_FAILURE = "planned failure in make_method"
_real_make_method = methods.make_method


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


methods.make_method = make_method  # the CLI imports it when the command runs

if __name__ == "__main__":
    app(prog_name="vlmclf")
