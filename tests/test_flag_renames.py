"""One meaning per flag name: options renamed to the spelling every other command uses keep
their old spelling for one release, with a deprecation warning; both at once is an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_data import write_noisy_colour_folder
from typer.testing import CliRunner

from vlmclf.cli import app


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return write_noisy_colour_folder(tmp_path / "images", per_class=1, seed=4, noise=5.0)


def manifest_ids(path: Path) -> list[str]:
    return [json.loads(line)["image"] for line in path.read_text().splitlines()]


def test_data_manifest_takes_dataset_and_data_root(folder: Path, tmp_path: Path):
    out = tmp_path / "new.jsonl"
    result = CliRunner().invoke(app, ["data", "manifest", "--dataset", "imagefolder", "--data-root",
                                      str(folder), "--out-file", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "deprecated" not in result.output and len(manifest_ids(out)) == 3


def test_data_manifest_old_spellings_still_work_with_a_warning(folder: Path, tmp_path: Path):
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    result = CliRunner().invoke(app, ["data", "manifest", "--layout", "imagefolder", "--root",
                                      str(folder), "--out", str(old)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: --layout is deprecated and goes in the next release; use --dataset" in (
        result.stderr
    )
    assert "warning: --root is deprecated and goes in the next release; use --data-root" in (
        result.stderr
    )
    assert "warning: --out is deprecated and goes in the next release; use --out-file" in (
        result.stderr
    )
    CliRunner().invoke(app, ["data", "manifest", "--dataset", "imagefolder", "--data-root",
                             str(folder), "--out-file", str(new)])  # fmt: skip
    assert old.read_text() == new.read_text()


def test_old_and_new_spelling_together_is_an_error(folder: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["data", "manifest", "--layout", "imagefolder", "--dataset",
                                      "imagefolder", "--data-root", str(folder), "--out-file",
                                      str(tmp_path / "m.jsonl")])  # fmt: skip
    assert result.exit_code == 2
    assert "error: --layout is the old name of --dataset: give --dataset only" in result.output
    missing = CliRunner().invoke(app, ["data", "manifest", "--data-root", str(folder),
                                       "--out-file", str(tmp_path / "m.jsonl")])  # fmt: skip
    assert missing.exit_code == 2 and "error: Missing option '--dataset'." in missing.output


def test_frequency_corpus_format_and_its_old_name(tmp_path: Path):
    corpus = tmp_path / "corpus.data"
    corpus.write_text("a tench\nthe goldfish\ngoldfish\n")
    base = ["frequency", "--corpus", str(corpus), "--classes", "imagenet", "--store",
            str(tmp_path / "s.sqlite")]  # fmt: skip
    new = CliRunner().invoke(app, [*base, "--corpus-format", "text", "--out", str(tmp_path / "a")])
    old = CliRunner().invoke(app, [*base, "--format", "text", "--out", str(tmp_path / "b")])
    assert new.exit_code == 0 and old.exit_code == 0, new.output + old.output
    assert "deprecated" not in new.output
    assert "warning: --format is deprecated and goes in the next release; use --corpus-format" in (
        old.stderr
    )


def test_finetune_limit_and_eval_limit_together_are_refused_before_any_work(tmp_path: Path):
    result = CliRunner().invoke(app, ["finetune", "--model", "random:llava", "--dataset",
                                      "fashion_mnist", "--limit", "4", "--eval-limit", "4",
                                      "--store", str(tmp_path / "s.sqlite")])  # fmt: skip
    assert result.exit_code == 2
    assert "error: --eval-limit is the old name of --limit: give --limit only" in result.output
    assert not (tmp_path / "s.sqlite").exists()


def test_renamed_options_are_hidden_from_help():
    for path, old in ((["data", "manifest"], "--layout"), (["frequency"], "--format"),
                      (["finetune"], "--eval-limit"), (["finetune"], "--micro-batch"),
                      (["wikiqa"], "--images"), (["report"], "--out"), (["export"], "--out"),
                      (["reproduce"], "--out"), (["data", "manifest"], "--out"),
                      (["wikiqa", "build"], "--out")):  # fmt: skip
        text = CliRunner().invoke(app, [*path, "--help"], terminal_width=200).output
        assert f" {old} " not in text


def test_sweep_takes_a_repeated_model_like_dataset_and_records_threads(folder: Path, tmp_path):
    store = tmp_path / "s.sqlite"
    base = ["sweep", "--dataset", "imagefolder", "--data-root", str(folder), "--limit", "2",
            "--max-new-tokens", "2", "--store", str(store), "--out", str(tmp_path / "o"),
            "--no-progress", "--json"]  # fmt: skip
    new = CliRunner().invoke(app, [*base, "--model", "random:llava", "--threads", "1"])
    assert new.exit_code == 0, new.output
    old = CliRunner().invoke(app, [*base, "--models", "random:llava"])
    assert old.exit_code == 0, old.output
    assert "warning: --models is deprecated and goes in the next release; use --model" in (
        old.stderr
    )
    rows = json.loads(CliRunner().invoke(app, ["results", "--store", str(store), "--format",
                                               "json"]).stdout)  # fmt: skip
    assert len(rows) == 1 and rows[0]["threads"] == 1  # the same run, reused
    missing = CliRunner().invoke(app, base)
    assert missing.exit_code == 2 and "error: Missing option '--model'." in missing.output


# ------------------------------------------------------------------ finetune's two batch sizes


@pytest.fixture()
def finetune_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """The (request, runtime) pairs finetune would train with; nothing is trained."""
    import vlmclf.analysis.finetune.run as finetune_run

    calls: list = []
    monkeypatch.setattr(finetune_run, "run_finetune", lambda *pair: calls.append(pair))
    return calls


FINETUNE = ["finetune", "--model", "random:llava", "--dataset", "fashion_mnist"]
OLD_STEP = "finetune --batch-size {n} now means examples per model call, as in every command"


@pytest.mark.parametrize(("args", "per_step", "per_call", "warning"), [
    ([], 64, None, None),
    (["--step-batch-size", "32"], 32, None, None),
    (["--step-batch-size", "32", "--batch-size", "4"], 32, 4, None),
    (["--batch-size", "auto"], 64, None, None),
    (["--protocol", "paper"], 128, None, None),
    # the old spellings train as they did, with one warning line
    (["--batch-size", "32"], 32, 32, OLD_STEP.format(n=32)),
    (["--protocol", "paper", "--batch-size", "8"], 8, 8, OLD_STEP.format(n=8)),
    (["--batch-size", "32", "--micro-batch", "4"], 32, 4,
     "--batch-size 32 --micro-batch 4 is deprecated and goes in the next release; use "
     "--step-batch-size 32 --batch-size 4"),
    (["--micro-batch", "4"], 64, 4,
     "--micro-batch is deprecated and goes in the next release; use --batch-size"),
    (["--step-batch-size", "16", "--micro-batch", "4"], 16, 4,
     "--micro-batch is deprecated and goes in the next release; use --batch-size"),
])  # fmt: skip
def test_finetune_step_and_call_batch_sizes(finetune_calls, tmp_path, args, per_step, per_call,
                                            warning):  # fmt: skip
    result = CliRunner().invoke(app, [*FINETUNE, *args, "--store", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 0, result.output
    ((request, runtime),) = finetune_calls
    assert (request.batch_size, runtime.micro_batch) == (per_step, per_call)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == (warning is not None), result.stderr  # one line, or none
    assert warning is None or warnings[0].startswith(f"warning: {warning}")


def test_finetune_old_and_new_call_batch_together_is_an_error(finetune_calls, tmp_path):
    args = [*FINETUNE, "--step-batch-size", "32", "--batch-size", "4", "--micro-batch", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and not finetune_calls
    assert "error: --micro-batch is the old name of --batch-size: give --batch-size only" in (
        result.output
    )


# ------------------------------------------------------------------ rematch asks for its rule


def test_rematch_without_match_keeps_the_old_default_for_one_release(folder: Path, tmp_path):
    store = tmp_path / "s.sqlite"
    made = CliRunner().invoke(app, ["eval", "--model", "random:llava", "--method", "generate",
                                    "--dataset", "imagefolder", "--data-root", str(folder),
                                    "--max-new-tokens", "2", "--store", str(store),
                                    "--no-progress", "--json"])  # fmt: skip
    assert made.exit_code == 0, made.output
    run_id = json.loads(made.stdout)["run_id"]
    base = ["rematch", run_id, "--store", str(store), "--out", str(tmp_path / "r"), "--json"]
    old = CliRunner().invoke(app, base)
    new = CliRunner().invoke(app, [*base, "--match", "strict"])
    assert old.exit_code == 0 and new.exit_code == 0, old.output + new.output
    assert json.loads(old.stdout)["derived_run_id"] == json.loads(new.stdout)["derived_run_id"]
    assert json.loads(old.stdout)["match"] == "strict"
    assert old.stderr.count("warning:") == 1 and "deprecated" not in new.output
    assert ("warning: rematch without --match maps with strict, a default that goes in the next "
            "release") in old.stderr


# ------------------------------------------------------------------ --protocol thesis


@pytest.mark.parametrize(("args", "experiment"), [
    (["probe", "--model", "random:llava", "--dataset", "fashion_mnist"], "probe"),
    (["finetune", "--model", "random:llava", "--dataset", "fashion_mnist"], "finetune"),
    (["wikiqa", "--model", "random:llava", "--wikiqa-images", "."], "wikiqa"),
    (["eval", "--model", "random:llava", "--dataset", "fashion_mnist", "--method",
      "likelihood"], "likelihood"),
    (["reproduce", "table3", "--model", "random:llava"], "probe"),
])  # fmt: skip
def test_protocol_thesis_is_refused_in_one_line_where_it_defines_nothing(tmp_path, args,
                                                                         experiment):  # fmt: skip
    store = tmp_path / "s.sqlite"
    result = CliRunner().invoke(app, [*args, "--protocol", "thesis", "--store", str(store)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output == (
        f"error: --protocol thesis has no {experiment} settings (the companion thesis (Ritossa "
        f"2024) defines only classifier, generate, clip); for {experiment} use --protocol clean "
        "or paper\n"
    )
    assert not store.exists()


# ------------------------------------------------------------------ one meaning per flag name


def visible_options() -> dict[str, dict[str, object]]:
    """{flag: {command path: its option}} over every command, deprecated spellings (hidden)
    left out."""
    import typer

    found: dict[str, dict[str, object]] = {}

    def walk(command, path: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden:
                for flag in param.opts:
                    found.setdefault(flag, {})[path] = param

    walk(typer.main.get_command(app), "")
    return found


def value_kind(option) -> str:
    """What an option's value is, whatever its spelling in Python: a path and a name are both
    text, a repeatable option is its element, a choice (an enum) is text."""
    import enum
    import typing

    annotation = option.type_descriptor.annotation
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    if annotation in (bool, int, float):
        return annotation.__name__
    assert annotation is str or issubclass(annotation, (Path, enum.Enum)), annotation
    return "text"


def comparable_default(option) -> object:
    default = option.default
    return getattr(default, "value", default)  # an enum's value


SAME_NAME_OTHER_DEFAULT = {
    # reproduce passes these to every command it runs; None there means "each command's own"
    ("--device", "reproduce"), ("--dtype", "reproduce"), ("--store", "reproduce"),
    ("--protocol", "reproduce"),  # it reproduces the paper: paper
    ("--method", "wikiqa"),  # its methods answer A-D: generate; eval's has no default
    ("--method", "attribute"),  # a filter over stored runs: none
    ("--seed", "wikiqa build"),  # the paper's question-shuffling seed, 1234
    ("--out", "demo"),  # the demo's fixed folder; elsewhere None is the command's own folder
    ("--match", "rematch"),  # no default: it asks which rule to compare with the run's own
}
NOT_YET_ONE_MEANING = {
    # known to mean different things, left for later (not in issue 24's list)
    "--format": "eval: the closed-world answer format; export: the file format; results: the "
                "table format",
    "--run": "frequency: a run id to join with; reproduce: a switch that runs the commands",
    "--epochs": "passes over the training data in both, but probe takes whole ones (default 50) "
                "and finetune fractions (default 1)",
}  # fmt: skip


def test_out_is_a_folder_in_every_command():
    commands = visible_options()["--out"]
    assert len(commands) >= 10
    for path, option in commands.items():
        info = option.type_descriptor.parameter_info
        assert not info.file_okay and info.dir_okay, f"vlmclf {path} --out is not a folder"
    for path in ("data manifest", "report", "reproduce", "export", "wikiqa build"):
        assert path not in commands and path in visible_options()["--out-file"]


def test_batch_size_workers_and_match_have_one_default():
    options = visible_options()
    assert {comparable_default(o) for o in options["--batch-size"].values()} == {"auto"}
    assert {comparable_default(o) for o in options["--workers"].values()} == {4}
    matches = {path: comparable_default(o) for path, o in options["--match"].items()}
    assert matches.pop("rematch") is None  # it asks which rule to compare with eval's
    assert set(matches.values()) == {"contain"} and "eval" in matches


def test_a_flag_name_shared_by_commands_has_one_kind_of_value_and_one_default():
    for flag, commands in visible_options().items():
        if len(commands) < 2 or flag in NOT_YET_ONE_MEANING:
            continue
        kinds = {path: value_kind(option) for path, option in commands.items()}
        assert len(set(kinds.values())) == 1, f"{flag}: {kinds}"
        defaults = {path: comparable_default(option) for path, option in commands.items()
                    if (flag, path) not in SAME_NAME_OTHER_DEFAULT}  # fmt: skip
        assert len({repr(d) for d in defaults.values()}) <= 1, f"{flag}: {defaults}"


def test_the_exception_lists_name_only_real_options():
    options = visible_options()
    for flag, path in SAME_NAME_OTHER_DEFAULT:
        assert path in options[flag], (flag, path)
    assert all(len(options[flag]) > 1 for flag in NOT_YET_ONE_MEANING)


# ------------------------------------------------------------------ one-file outputs: --out-file

OLD_OUT = "warning: --out is deprecated and goes in the next release; use --out-file"


@pytest.fixture()
def clip_run(folder: Path, tmp_path: Path) -> tuple[Path, str]:
    store = tmp_path / "s.sqlite"
    made = CliRunner().invoke(app, ["eval", "--model", "random:clip", "--method", "clip",
                                    "--dataset", "imagefolder", "--data-root", str(folder),
                                    "--store", str(store), "--no-progress", "--json"])  # fmt: skip
    assert made.exit_code == 0, made.output
    return store, json.loads(made.stdout)["run_id"]


@pytest.mark.parametrize("command", ["export", "report"])
def test_one_file_outputs_take_out_file_and_their_old_out(clip_run, tmp_path, command):
    store, run_id = clip_run
    base = [*(["export", run_id] if command == "export" else ["report"]), "--store", str(store)]
    new = CliRunner().invoke(app, [*base, "--out-file", str(tmp_path / "new")])
    old = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "old")])
    assert new.exit_code == 0 and old.exit_code == 0, new.output + old.output
    assert "warning" not in new.stderr and old.stderr.count("warning:") == 1
    assert OLD_OUT in old.stderr
    assert (tmp_path / "new").is_file() and (tmp_path / "old").is_file()
    if command == "export":
        assert (tmp_path / "new").read_text() == (tmp_path / "old").read_text()
    both = CliRunner().invoke(app, [*base, "--out", "a", "--out-file", "b"])
    assert both.exit_code == 2
    assert "error: --out is the old name of --out-file: give --out-file only" in both.output


def test_export_out_file_dash_is_standard_output(clip_run):
    store, run_id = clip_run
    result = CliRunner().invoke(app, ["export", run_id, "--store", str(store), "--out-file", "-"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3 and "standard output" in result.stderr


def test_reproduce_and_wikiqa_build_take_out_file_and_their_old_out(tmp_path: Path):
    listed = CliRunner().invoke(app, ["reproduce", "table1", "--model", "random:llava", "--out",
                                      str(tmp_path / "t.md")])  # fmt: skip
    assert listed.exit_code == 0 and listed.stderr.count("warning:") == 1, listed.output
    assert OLD_OUT in listed.stderr and "vlmclf eval --model random:llava" in listed.stdout
    build = ["wikiqa", "build", "--model", "random:llava", "--classes", "imagenet", "--wiki",
             str(tmp_path / "missing.jsonl"), "--store", str(tmp_path / "s.sqlite")]  # fmt: skip
    old = CliRunner().invoke(app, [*build, "--out", str(tmp_path / "q.jsonl")])
    new = CliRunner().invoke(app, [*build, "--out-file", str(tmp_path / "q.jsonl")])
    assert old.exit_code == new.exit_code == 2  # both get as far as the missing article file
    assert OLD_OUT in old.stderr and "warning" not in new.stderr
    assert "missing.jsonl" in old.stderr and old.stderr.replace(OLD_OUT + "\n", "") == new.stderr
    missing = CliRunner().invoke(app, build)
    assert missing.exit_code == 2 and "error: Missing option '--out-file'." in missing.output


def test_a_folder_out_that_is_a_file_is_refused_before_any_work(tmp_path: Path):
    afile = tmp_path / "report.html"
    afile.write_text("")
    result = CliRunner().invoke(app, ["probe", "--model", "random:llava", "--dataset",
                                      "fashion_mnist", "--out", str(afile), "--store",
                                      str(tmp_path / "s.sqlite")])  # fmt: skip
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "error: Invalid value for '--out':" in result.output and "is a file" in result.output
    assert not (tmp_path / "s.sqlite").exists()


# ------------------------------------------------------------------ wikiqa --wikiqa-images


def test_wikiqa_images_and_its_old_name(tmp_path: Path):
    from PIL import Image

    (tmp_path / "val").mkdir()
    Image.new("RGB", (24, 24), (200, 30, 30)).save(tmp_path / "val" / "v1.JPEG", format="JPEG")
    text = "\n".join(["What does it eat?", "A. Fish", "B. Grass", "C. Rocks", "D. Metal"])
    question = {"image": "v1.JPEG", "text": text, "label": "A", "wiki": "w", "classname": "c"}
    (tmp_path / "q.jsonl").write_text(json.dumps(question) + "\n")
    base = ["wikiqa", "--model", "random:llava", "--questions", str(tmp_path / "q.jsonl"),
            "--max-new-tokens", "2", "--store", str(tmp_path / "s.sqlite"), "--out",
            str(tmp_path / "o"), "--no-progress", "--json"]  # fmt: skip
    new = CliRunner().invoke(app, [*base, "--wikiqa-images", str(tmp_path / "val")])
    old = CliRunner().invoke(app, [*base, "--images", str(tmp_path / "val")])
    assert new.exit_code == 0 and old.exit_code == 0, new.output + old.output
    assert json.loads(new.stdout)["summary"]["n_ok"] == 1
    assert json.loads(old.stdout)["run_id"] == json.loads(new.stdout)["run_id"]
    assert "warning" not in new.stderr and old.stderr.count("warning:") == 1
    assert "warning: --images is deprecated and goes in the next release; use --wikiqa-images" in (
        old.stderr
    )
