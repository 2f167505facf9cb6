"""The API client wastes nothing: a deterministic 500 is not retried six times, a server that
drops the image is noticed, self-hosted models can be priced and capped, hints name the cause."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import api_servers
import pytest
from api_servers import FakeApiServer, Fault, fast_settings, make_images, status
from test_wikiqa import tiny_wikiqa  # noqa: F401 - a fixture
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.commands.wikiqa import wikiqa_app
from vlmclf.models.api import ApiFailure, load_api_model

BOOM = b'{"error": {"message": "KeyError: pixel_values", "type": "server_error"}}'


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def _model(server: FakeApiServer, tmp_path: Path, **overrides):
    settings = fast_settings(server, tmp_path / "cache.sqlite", **overrides)
    return load_api_model("openai:test-model", **settings)


def test_the_same_500_twice_stops_that_item_after_two_attempts(tmp_path):
    with FakeApiServer("openai", always={"broken": status(500, body=BOOM)}) as server:
        out = _model(server, tmp_path, max_retries=6).generate(make_images(2), ["broken", "ok"], 5)
    assert isinstance(out[0], ApiFailure) and out[0].kind == "server_error"
    assert "the same error twice in a row" in str(out[0]) and "pixel_values" in str(out[0])
    assert out[0].attempts == 2 and out[1] == "answer to ok"
    assert sum(r.prompt == "broken" for r in server.chat_requests) == 2


def test_forty_items_of_a_deterministic_500_cost_eighty_requests_not_280(tmp_path):
    with FakeApiServer("openai", plan=lambda _i, _p: status(500, body=BOOM)) as server:
        model = _model(server, tmp_path, max_retries=6, concurrency=8)
        out = model.generate(make_images(40), [f"q{i}" for i in range(40)], 5)
    assert all(isinstance(o, ApiFailure) for o in out)
    assert len(server.chat_requests) == 80 == model.usage()["requests"]


def test_a_500_whose_body_changes_is_retried_as_before(tmp_path):
    bodies = iter(f'{{"error": {{"message": "overloaded #{i}"}}}}'.encode() for i in range(10))
    faults = {"flaky": [status(500, body=next(bodies)) for _ in range(3)]}
    with FakeApiServer("openai", by_prompt=faults) as server:
        out = _model(server, tmp_path, max_retries=6).generate(make_images(1), ["flaky"], 5)
    assert out == ["answer to flaky"] and len(server.chat_requests) == 4


@pytest.mark.parametrize("code", [429, 502, 503])
def test_load_and_gateway_errors_keep_their_retries_even_with_equal_bodies(tmp_path, code):
    with FakeApiServer("openai", always={"busy": Fault("status", status=code, body=BOOM)}) as s:
        out = _model(s, tmp_path, max_retries=3).generate(make_images(1), ["busy"], 5)
    assert isinstance(out[0], ApiFailure) and out[0].kind == "retries_exhausted"
    assert len(s.chat_requests) == 4


def test_too_few_input_tokens_for_an_image_request_warn_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(api_servers, "INPUT_TOKENS", 3)  # the server dropped image and question
    question = "What type of object is in this photo?"
    with FakeApiServer("openai") as server, caplog.at_level(logging.WARNING, "vlmclf.api"):
        model = _model(server, tmp_path)
        model.generate(make_images(3), [question] * 3, 5)
    warnings = [r.getMessage() for r in caplog.records if "input tokens" in r.getMessage()]
    assert len(warnings) == 1 and "3 input tokens" in warnings[0]
    assert "dropping the image or the question" in warnings[0]
    assert model.usage()["implausible_input_tokens"] == 3


def test_a_plausible_input_count_does_not_warn(tmp_path, caplog):
    with FakeApiServer("openai") as server, caplog.at_level(logging.WARNING, "vlmclf.api"):
        model = _model(server, tmp_path)
        model.generate(make_images(2), ["What is in this photo?"] * 2, 5)
    assert not [r for r in caplog.records if "input tokens" in r.getMessage()]
    assert model.usage()["implausible_input_tokens"] == 0


def _eval_args(server: FakeApiServer, tmp_path: Path, *extra: str) -> list[str]:
    from test_eval import make_image_folder

    root = make_image_folder(tmp_path / "images", per_class=2)
    return ["eval", "--model", "openai:test-model", "--base-url", server.base_url,
            "--dataset", "imagefolder", "--data-root", str(root), "--method", "generate",
            "--store", str(tmp_path / "s.sqlite"), "--no-progress", "--json",
            "--concurrency", "1", *extra]  # fmt: skip


def test_price_file_prices_a_self_hosted_model_and_max_cost_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "cache.sqlite"))
    prices = tmp_path / "prices.json"
    # 100 input tokens per request at $10 per 1M: $0.001 a request, so a $0.0025 cap allows 3
    prices.write_text(json.dumps({"test-model": {"input": 10.0, "output": 0.0}}))
    with FakeApiServer("openai") as server:
        args = _eval_args(server, tmp_path, "--price-file", str(prices), "--max-cost", "0.0025")
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "spend cap reached (max_cost_usd=0.0025)" in result.output
    assert len(server.chat_requests) == 3


def test_max_cost_without_a_price_names_the_price_file_option(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "cache.sqlite"))
    with FakeApiServer("openai") as server:
        result = CliRunner().invoke(app, _eval_args(server, tmp_path, "--max-cost", "1"))
    assert result.exit_code == 2 and "--price-file" in result.output
    assert server.chat_requests == []


def test_a_bad_price_file_is_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "cache.sqlite"))
    prices = tmp_path / "prices.json"
    prices.write_text('{"test-model": {"input": -1, "output": 0}}')
    with FakeApiServer("openai") as server:
        result = CliRunner().invoke(app, _eval_args(server, tmp_path, "--price-file", str(prices)))
    assert result.exit_code == 2
    assert f"price file {prices}" in result.output and "non-negative" in result.output


def test_wikiqa_names_the_real_cause_when_every_question_fails(
    tiny_wikiqa,  # noqa: F811 - the fixture imported above
    tmp_path,
    monkeypatch,
):
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "cache.sqlite"))
    root, questions = tiny_wikiqa
    with FakeApiServer("openai", key=None, plan=lambda _i, _p: status(500, body=BOOM)) as server:
        args = ["--model", "openai:test-model", "--base-url", server.base_url, "--wikiqa-images",
                str(root), "--questions", str(questions), "--store", str(tmp_path / "s.sqlite"),
                "--out", str(tmp_path / "o"), "--no-progress"]  # fmt: skip
        result = CliRunner().invoke(wikiqa_app, args)
    assert result.exit_code == 1
    # four questions have images and fail on the server; one image is really missing
    assert "the commonest reason (4 of 5): HTTP 500" in result.output
    assert "pixel_values" in result.output and "are the images under" not in result.output
