"""Run identity: the same spec gives the same id; options that change results change it."""

import pytest
from pydantic import ValidationError

from vlmclf.spec import RunSpec


def test_same_spec_same_id_and_defaults_do_not_count():
    a = RunSpec(model="random:llava", dataset="fashion_mnist", method="generate")
    b = RunSpec(
        model="random:llava", dataset="fashion_mnist", method="generate", order="fixed", seed=0
    )
    assert a.run_id == b.run_id
    assert len(a.run_id) == 16


def test_result_changing_fields_change_the_id():
    base = dict(model="random:llava", dataset="fashion_mnist", method="generate")
    ids = {
        RunSpec(**base).run_id,
        RunSpec(**base, setting="closed", k=5).run_id,
        RunSpec(**base, setting="closed", k=5, order="random").run_id,
        RunSpec(**base, prompt="alt1").run_id,
        RunSpec(**base, cot=True).run_id,
        RunSpec(**base, seed=1).run_id,
        RunSpec(**base, options={"agg": "mean"}).run_id,
    }
    assert len(ids) == 7


def test_unknown_fields_and_methods_are_rejected():
    with pytest.raises(ValidationError):
        RunSpec(model="m", dataset="d", method="guess")
    with pytest.raises(ValidationError):
        RunSpec(model="m", dataset="d", method="clip", batch_size=4)
