"""Hard multiple choice: the miner against a direct computation with the choice model, the cache,
every method with every choice mode through the CLI, the identity, and the sweep's choices axis.

The choice model is ``random:clip`` (a real CLIP architecture with random weights): its rankings
are arbitrary but exact, which is what the comparison with the direct computation needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.fixtures_data import make_fashion_tree
from vlmclf.cli import app
from vlmclf.data import load_dataset
from vlmclf.data.classnames import canonical_indices
from vlmclf.methods.prompts import load_templates
from vlmclf.models import load_model
from vlmclf.run.hard_choices import MINED_DEPTH, mine_choices
from vlmclf.spec import RunSpec
from vlmclf.store import RunStore

N_TEST = 6
K = 4


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fashion")
    make_fashion_tree(root, n_train=2, n_test=N_TEST)
    return root


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VLMCLF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def clip() -> object:
    return load_model("random:clip")


def direct_class_embedding(encoder: object, name: str, templates: list[str]) -> torch.Tensor:
    """CLIP's ensembled class embedding, one text at a time."""
    rows = [encoder.encode_texts([template.format(name)])[0] for template in templates]
    mean = torch.stack(rows).mean(dim=0)
    return mean / mean.norm()


def spec_for(mode: str, method: str = "clip") -> RunSpec:
    setting = "open" if method == "clip" else "closed"
    return RunSpec(model="random:clip", dataset="fashion_mnist", method=method, setting=setting,
                   k=K, choices=mode, choice_model="random:clip")  # fmt: skip


def test_hard_image_negatives_equal_a_direct_computation(fashion: Path, clip: object):
    dataset = load_dataset("fashion_mnist", data_root=str(fashion))
    names = dataset.class_names
    templates = load_templates("paper")
    mined = mine_choices(spec_for("hard-image"), names, dataset.name, dataset.split,
                         dataset.examples, lambda _: clip)  # fmt: skip
    with torch.inference_mode():
        text = {i: direct_class_embedding(clip, name, templates) for i, name in enumerate(names)}
        for example in dataset.examples:
            image = clip.encode_images([example.load()])[0]
            score = {i: float(image @ text[i]) for i in text if i != example.label}
            direct = sorted(score, key=lambda i: (-score[i], i))
            assert mined.negatives[example.id] == direct[:MINED_DEPTH]
            offered = mined.offered(example.id, example.label, names, K, "fixed", 0)
            assert offered == sorted([example.label, *direct[: K - 1]])


def test_hard_text_negatives_equal_a_direct_computation(clip: object):
    names = [
        "T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
        "bag", "ankle boot", "coat",  # a repeated name: offered once, as its first index
    ]  # fmt: skip
    templates = load_templates("paper")
    mined = mine_choices(spec_for("hard-text"), names, "any", "test", [], lambda _: clip)
    canonical = canonical_indices(names)
    distinct = sorted(set(canonical))
    with torch.inference_mode():
        text = {i: direct_class_embedding(clip, names[i], templates) for i in distinct}
    for true in distinct:
        similarity = {i: float(text[true] @ text[i]) for i in distinct if i != true}
        direct = sorted(similarity, key=lambda i: (-similarity[i], i))
        assert mined.negatives[str(true)] == direct
    # the duplicate index 10 ("coat") is offered as 4, with 4's negatives
    assert mined.offered("x", 10, names, 3, "fixed", 0) == sorted([4, *mined.negatives["4"][:2]])
    shuffled = mined.offered("x", 10, names, 3, "random", 5)
    assert sorted(shuffled) == mined.offered("x", 10, names, 3, "fixed", 0)
    assert shuffled == mined.offered("x", 10, names, 3, "random", 5)  # the same in every process


def test_mined_choices_are_cached_and_extended_not_recomputed(fashion: Path, clip: object):
    dataset = load_dataset("fashion_mnist", data_root=str(fashion))
    loads: list[str] = []

    def load(spec: str) -> object:
        loads.append(spec)
        return clip

    spec = spec_for("hard-image")
    first = mine_choices(spec, dataset.class_names, dataset.name, "test", dataset.examples[:3],
                         load)  # fmt: skip
    again = mine_choices(spec, dataset.class_names, dataset.name, "test", dataset.examples[:3],
                         load)  # fmt: skip
    assert loads == ["random:clip"] and again.negatives == first.negatives
    more = mine_choices(spec, dataset.class_names, dataset.name, "test", dataset.examples, load)
    assert len(loads) == 2 and len(more.negatives) == N_TEST
    assert {key: more.negatives[key] for key in first.negatives} == first.negatives
    other_split = mine_choices(spec, dataset.class_names, dataset.name, "train",
                               dataset.examples[:1], load)  # fmt: skip
    assert len(loads) == 3 and len(other_split.negatives) == 1  # a cache per split


# --------------------------------------------------------------------------- through the CLI


def eval_json(*args: str, exit_code: int = 0) -> dict:
    result = CliRunner().invoke(app, ["eval", *args, "--json", "--no-progress"])
    assert result.exit_code == exit_code, result.output
    return json.loads(result.stdout.strip().splitlines()[-1]) if exit_code == 0 else {}


def method_args(method: str) -> list[str]:
    if method == "clip":
        return ["--model", "random:clip", "--method", "clip"]
    extra = ["--max-new-tokens", "3"] if method == "generate" else []
    return ["--model", "random:llava", "--method", method, "--setting", "closed", *extra]


def stored_choices(store: Path, run_id: str) -> dict[str, list[int]]:
    with RunStore(store) as runs:
        return {p.example_id: p.choices for p in runs.predictions(run_id)}


@pytest.mark.parametrize("mode", ["random", "hard-text", "hard-image"])
def test_every_method_runs_with_every_choice_mode_on_the_same_choices(
    mode: str, fashion: Path, tmp_path: Path
):
    """clip, generate and likelihood over one dataset with one choice mode: every prediction
    stores the K choices it was offered, the same for the three methods."""
    store = tmp_path / "runs.sqlite"
    offered = []
    for method in ("clip", "generate", "likelihood"):
        summary = eval_json(*method_args(method), "--dataset", "fashion_mnist", "--data-root",
                            str(fashion), "--k", str(K), "--choices", mode, "--choice-model",
                            "random:clip", "--store", str(store))  # fmt: skip
        assert summary["n"] == N_TEST and summary["n_failed"] == 0
        offered.append(stored_choices(store, summary["run_id"]))
    assert offered[0] == offered[1] == offered[2]
    dataset = load_dataset("fashion_mnist", data_root=str(fashion))
    for example in dataset.examples:
        choices = offered[0][example.id]
        assert len(choices) == K and example.label in choices
    if mode == "hard-image":
        spec = spec_for(mode)
        mined = mine_choices(spec, dataset.class_names, dataset.name, dataset.split,
                             dataset.examples, lambda _: pytest.fail("the cache has them"))
        for example in dataset.examples:
            expected = mined.offered(example.id, example.label, dataset.class_names, K, "fixed", 0)
            assert offered[0][example.id] == expected


def test_choice_mode_and_model_are_in_the_identity(fashion: Path, tmp_path: Path):
    base = [*method_args("clip"), "--dataset", "fashion_mnist", "--data-root", str(fashion),
            "--k", str(K), "--store", str(tmp_path / "runs.sqlite")]  # fmt: skip
    random_run = eval_json(*base)
    hard = eval_json(*base, "--choices", "hard-image", "--choice-model", "random:clip")
    text = eval_json(*base, "--choices", "hard-text", "--choice-model", "random:clip")
    other_model = eval_json(*base, "--choices", "hard-image", "--choice-model", "random:siglip")
    ids = {random_run["run_id"], hard["run_id"], text["run_id"], other_model["run_id"]}
    assert len(ids) == 4
    assert eval_json(*base)["run_id"] == random_run["run_id"]  # random keeps its old id


def test_hard_choice_mistakes_are_one_line(fashion: Path, tmp_path: Path):
    base = ["--dataset", "fashion_mnist", "--data-root", str(fashion), "--store",
            str(tmp_path / "runs.sqlite")]  # fmt: skip
    cases = [
        ([*method_args("clip"), "--choices", "hard-image", "--choice-model", "random:clip"],
         "--choices hard-image offers K classes: pass --k"),
        ([*method_args("clip"), "--k", "3", "--choices", "hard-text"],
         "--choices hard-text needs --choice-model"),
        (["--model", "random:llava", "--method", "generate", "--k", "3", "--choices",
          "hard-image", "--choice-model", "random:clip"], "add --setting closed"),
        ([*method_args("clip"), "--k", "3", "--choices", "hard-image", "--choice-model",
          "random:llava"], "is not a CLIP-style encoder"),
    ]  # fmt: skip
    for args, message in cases:
        result = CliRunner().invoke(app, ["eval", *args, *base, "--no-progress"])
        assert result.exit_code != 0
        assert message in result.output, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.output


def test_sweep_has_a_choices_axis(fashion: Path, tmp_path: Path):
    result = CliRunner().invoke(app, [
        "sweep", "--model", "random:clip", "--dataset", "fashion_mnist", "--data-root",
        str(fashion), "--axis", "strategy=clip", "--axis", f"k={K}", "--axis",
        "choices=random,hard-image", "--choice-model", "random:clip", "--store",
        str(tmp_path / "runs.sqlite"), "--out", str(tmp_path / "out"), "--json", "--no-progress",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])["rows"]
    assert [(row["choices"], row["error"]) for row in rows] == [("random", None),
                                                                ("hard-image", None)]
    assert rows[0]["run_id"] != rows[1]["run_id"]
    assert (tmp_path / "out" / "sweep_by_choices.csv").is_file()


# --------------------------------------------------------------------------- --format mc


def test_lettered_options_and_the_mmmu_reading():
    from vlmclf.methods.generate import lettered_answer
    from vlmclf.methods.prompts import build_question

    names = ["T-shirt/top", "trouser", "pullover", "dress", "coat"]
    question = build_question("base", ["coat", "dress", "trouser"], lettered=True)
    assert question.splitlines()[1:] == [
        "A. coat", "B. dress", "C. trouser",
        "Answer with the option's letter from the given choices directly.",
    ]  # fmt: skip
    choices = [4, 3, 1]
    assert lettered_answer("B", choices, names) == 3
    assert lettered_answer("(C) trouser", choices, names) == 1
    assert lettered_answer("The answer is (A), a coat.", choices, names) == 4
    assert lettered_answer("I cannot tell", choices, names) is None
    # MMMU's rule on a long answer without letters: the option text mentioned last ("trouser")
    assert lettered_answer("It is most likely a dress, not a coat or trousers.", choices,
                           names) == 1  # fmt: skip


def test_format_mc_runs_generation_on_hard_choices_and_reads_letters(
    fashion: Path, tmp_path: Path
):
    from vlmclf.methods.generate import lettered_answer

    store = tmp_path / "runs.sqlite"
    summary = eval_json(*method_args("generate"), "--format", "mc", "--dataset", "fashion_mnist",
                        "--data-root", str(fashion), "--k", str(K), "--choices", "hard-image",
                        "--choice-model", "random:clip", "--store", str(store))  # fmt: skip
    assert summary["n"] == N_TEST
    names = load_dataset("fashion_mnist", data_root=str(fashion)).class_names
    with RunStore(store) as runs:
        predictions = runs.predictions(summary["run_id"])
        (record,) = runs.list_runs()
    for p in predictions:
        assert len(p.choices) == K and p.pred == lettered_answer(p.text, p.choices, names)
    names_run = eval_json(*method_args("generate"), "--dataset", "fashion_mnist", "--data-root",
                          str(fashion), "--k", str(K), "--choices", "hard-image",
                          "--choice-model", "random:clip", "--store", str(store))  # fmt: skip
    assert names_run["run_id"] != summary["run_id"]
    refused = CliRunner().invoke(app, ["eval", *method_args("likelihood"), "--format", "mc",
                                       "--dataset", "fashion_mnist", "--data-root", str(fashion),
                                       "--store", str(store)])  # fmt: skip
    assert refused.exit_code != 0
    assert "--format mc asks with lettered options" in refused.output


def test_the_run_line_names_the_choice_mode_and_format():
    from vlmclf.report.summary import describe_spec

    spec = spec_for("hard-image", "generate").model_copy(update={"answer_format": "mc"})
    assert "K=4 (fixed order) hard-image choices by random:clip format=mc" in describe_spec(spec)
    assert "choices" not in describe_spec(spec_for("random"))


def test_a_clip_on_its_own_hard_image_choices_scores_its_all_class_top1(
    fashion: Path, tmp_path: Path
):
    """By construction: the true class wins against the K-1 wrong classes the model scores
    highest exactly when it wins against all of them, and otherwise the same wrong class wins."""
    store = tmp_path / "runs.sqlite"
    common = [*method_args("clip"), "--dataset", "fashion_mnist", "--data-root", str(fashion),
              "--store", str(store)]  # fmt: skip
    every = eval_json(*common)
    hard = eval_json(*common, "--k", "3", "--choices", "hard-image", "--choice-model",
                     "random:clip")  # fmt: skip
    with RunStore(store) as runs:
        every_rows = {p.example_id: (p.pred, p.hit) for p in runs.predictions(every["run_id"])}
        hard_rows = {p.example_id: (p.pred, p.hit) for p in runs.predictions(hard["run_id"])}
    assert hard_rows == every_rows
