"""`vlmclf reproduce`: the commands per table, running them, and the table's layout."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.paper import reproduce
from vlmclf.paper.steps import Context
from vlmclf.store import RunStore


# Options the protocol names that exist only once branch protocol-core is merged.
def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_eval import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("images"), per_class=2)


def test_list_names_every_table_and_figure():
    out = invoke("reproduce", "--list")
    names = [line.split()[0] for line in out.splitlines()]
    assert names == ["table1", "table2", "table3", "table4", "table7", "table9", "figure2",
                     "figure3", "figure4", "thesis"]  # fmt: skip


def command_options() -> dict[str, set[str]]:
    group = typer.main.get_command(app)
    options: dict[str, set[str]] = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        options[name] = {opt for param in command.params for opt in param.opts}
        options[name] |= {opt for param in command.params for opt in param.secondary_opts}
    return options


@pytest.mark.parametrize("table", list(reproduce.TABLES))
@pytest.mark.parametrize("protocol", ["paper", "clean"])
def test_every_printed_command_uses_real_options(table: str, protocol: str):
    out = invoke(
        "reproduce", table, "--model", "hf:llava-hf/llava-1.5-7b-hf", "--data-root", "/data",
        "--clip-model", "hf:openai/clip-vit-large-patch14-336", "--protocol", protocol,
        "--corpus", "captions.json", "--wikiqa-images", "/data/imagenet/val",
    )  # fmt: skip
    lines = [line for line in out.splitlines() if line.startswith("vlmclf ")]
    assert lines, out
    known = command_options()
    for line in lines:
        argv = shlex.split(line.split("  # ")[0])[1:]
        used = {a for a in argv if a.startswith("--")}
        unknown = used - known[argv[0]]
        assert not unknown, (line, unknown)


@pytest.mark.parametrize("table", list(reproduce.TABLES))
def test_output_path_reaches_every_printed_command(table: str):
    out = invoke(
        "reproduce", table, "--model", "hf:m", "--data-root", "/data", "--clip-model", "hf:c",
        "--corpus", "captions.json", "--wikiqa-images", "/data/val", "--output-path", "files",
    )  # fmt: skip
    lines = [line for line in out.splitlines() if line.startswith("vlmclf ")]
    known = command_options()
    for line in lines:
        argv = shlex.split(line.split("  # ")[0])[1:]
        assert argv[argv.index("--output-path") + 1] == "files", line
        assert "--output-path" in known[argv[0]]


def test_paper_commands_carry_the_paper_settings():
    out = invoke("reproduce", "table2", "--model", "hf:m", "--data-root", "/d/caltech101",
                 "--dataset", "caltech101")  # fmt: skip
    assert "--split paper_test" in out  # the paper's Caltech-101 split
    assert "--prompt alt3" in out  # the fourth wording
    assert "--method likelihood --limit 1000 --sample paper --protocol paper" in out
    probe = invoke("reproduce", "table3", "--model", "hf:m", "--dataset", "imagenet")
    assert "--epochs 100" in probe and "--lora-rank 128" in probe
    assert "--lora-targets all-linear" in probe and "--match exact" in probe
    flowers = invoke("reproduce", "table3", "--model", "hf:m", "--dataset", "flowers102")
    assert "--epochs 500" in flowers and "--train-split paper_train" in flowers
    probe_line = next(line for line in flowers.splitlines() if line.startswith("vlmclf probe"))
    assert "--protocol paper --epochs 500" in probe_line  # raw features, one shuffle, best epoch
    assert "no option yet" not in flowers
    wikiqa = invoke("reproduce", "table4", "--model", "hf:m", "--wikiqa-images", "/v")
    assert "vlmclf wikiqa --model hf:m --protocol paper --wikiqa-images /v --cot" in wikiqa
    assert "no option yet" not in wikiqa and "random letter" not in wikiqa
    thesis = invoke("reproduce", "thesis", "--model", "hf:m", "--dataset", "imagenet")
    assert thesis.count("--protocol thesis") == 3 and "--k 1000" in thesis


def test_unknown_table_is_a_one_line_error():
    result = CliRunner().invoke(app, ["reproduce", "table5", "--model", "hf:m"])
    assert result.exit_code == 2
    assert "unknown table 'table5'; known: table1, table2" in result.output


def in_process(argv: list[str]) -> dict:
    result = CliRunner().invoke(app, [*argv, "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def in_process_short(argv: list[str]) -> dict:
    """The command as reproduce wrote it, with a 2-token answer budget to keep the test fast."""
    return in_process([*argv, "--max-new-tokens", "2"] if "generate" in argv else argv)


def test_run_writes_the_table_in_the_paper_layout(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "_run_json", in_process_short)
    out_file = tmp_path / "t1.md"
    out = invoke(
        "reproduce", "table1", "--model", "random:llava", "--dataset", "imagefolder",
        "--data-root", str(folder), "--limit", "2", "--dtype", "float32", "--run",
        "--store", str(tmp_path / "r.sqlite"), "--out-file", str(out_file),
    )  # fmt: skip
    text = out_file.read_text()
    assert "| | imagefolder |" in text
    assert "| random:llava (open world) |" in text
    assert text.count("(no published number) |") == 2  # random:llava is none of the paper's
    assert "| random:llava (closed world) |" in text
    assert "protocol paper" in out


def slow_dataset_mean_cfg(predictions, class_names, t: float, agg: str) -> float:
    """Top-1 with the paper's prior: each class's mean over all images of its aggregated
    token log-probs, computed with plain loops."""
    names = list(dict.fromkeys(class_names))

    def agg_of(values):
        return sum(values) if agg == "sum" else sum(values) / len(values)

    per_image = [{n: agg_of(p.extra["token_logprobs"][n]) for n in names} for p in predictions]
    token_means = {}
    for n in names:
        rows = [p.extra["token_logprobs"][n] for p in predictions]
        token_means[n] = [sum(col) / len(col) for col in zip(*rows, strict=True)]
    prior = {n: agg_of(token_means[n]) for n in names}
    hits = 0
    for p, scores in zip(predictions, per_image, strict=True):
        guided = {n: t * scores[n] + (1 - t) * prior[n] for n in names}
        best = max(names, key=lambda n: guided[n])
        hits += best == class_names[p.label]
    return hits / len(predictions)


def test_likelihood_rows_match_a_slow_recomputation(folder, tmp_path):
    from vlmclf.paper.reproduce_likelihood import likelihood_table_cells

    store = tmp_path / "r.sqlite"
    out = in_process([
        "eval", "--model", "random:llava", "--dataset", "imagefolder", "--data-root",
        str(folder), "--method", "likelihood", "--protocol", "paper", "--dtype", "float32",
        "--store", str(store),
    ])  # fmt: skip
    ctx = Context(model="random:llava", datasets=("imagefolder",), protocol="paper")
    cells = likelihood_table_cells(out, ctx, "imagefolder")
    with RunStore(store) as runs:
        predictions = runs.predictions(out["run_id"])
        class_names = runs.get_run(out["run_id"]).class_names
    assert math.isclose(cells[("likelihood sum, top-1", "imagefolder")], out["accuracy"])
    for agg in ("sum", "mean"):
        for t in (0, 1, 3, 8):
            expected = slow_dataset_mean_cfg(predictions, class_names, t, agg)
            assert math.isclose(
                cells[(f"likelihood {agg} + CFG t={t}, top-1", "imagefolder")], expected
            ), (agg, t)
    assert cells[("likelihood sum, top-5", "imagefolder")] == 1.0  # 4 classes: always in top 5


def test_relative_errors_divide_by_the_smallest_k():
    cells = {("m", "K=2"): 0.9, ("m", "K=5"): 0.8, ("m", "K=20"): 0.6, ("m", "K=100"): 0.5}
    out = reproduce.relative_errors(cells)
    assert out[("m", "K=2")] == pytest.approx(1.0)
    assert out[("m", "K=20")] == pytest.approx(0.4 / 0.1)


def test_published_numbers_file_is_the_reference_copy():
    from vlmclf.report.published import published_numbers

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "published.json"
    data = published_numbers()
    assert data["paper"]["source"].startswith("Zhang et al.")
    assert len(data["paper"]["cells"]) == 317 and len(data["thesis"]["cells"]) == 18
    if shared.is_file():  # the project's reference folder, where this checkout has it
        assert json.loads(shared.read_text()) == data
