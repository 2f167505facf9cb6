"""Answer mapping (contain / strict / NLI / embedding) and `vlmclf rematch` on stored runs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from vlmclf.analysis.rematch import rematch
from vlmclf.commands.rematch import rematch_command
from vlmclf.methods import make_method
from vlmclf.methods.answer_mapping import (
    EmbeddingMatcher,
    NLIMatcher,
    apply_matcher,
    make_matcher,
    match_id,
    parse_match_id,
    with_answer_mapping,
)
from vlmclf.models.nli import load_nli
from vlmclf.records import Prediction
from vlmclf.run.runner import RunConfig, run
from vlmclf.spec import RunSpec
from vlmclf.store import RunStore

CLASSES = ["cat", "dog", "tiger cat", "bird"]


@pytest.fixture(scope="module")
def nli_model():  # noqa: ANN201 - a loaded model shared by the tests of this module
    return load_nli("random:bart_nli")


@pytest.fixture(scope="module")
def embed_matcher() -> EmbeddingMatcher:
    return make_matcher("embed")  # all-MiniLM-L6-v2 from the installed package, offline


def _written_run(store_path: Path) -> str:
    """A generation run whose answers are chosen to separate the rules."""
    spec = RunSpec(model="hand:written", dataset="animals", method="generate", setting="closed",
                   k=3)  # fmt: skip
    preds = [
        Prediction("1", 0, text="A tiger cat on a sofa.", choices=[0, 1, 2]),  # "cat" inside
        Prediction("2", 1, text="It is a dog.", choices=[1, 2, 3]),  # every rule: right
        Prediction("3", 3, text="A small songbird", choices=[0, 1, 3]),  # "bird" inside a word
        Prediction("4", 1, text="", choices=[0, 1, 2]),  # empty answer: no label for anyone
        Prediction.failed("5", 2, "bad image"),
    ]
    preds = apply_matcher(preds, CLASSES, "contain")  # the runner's own rule at eval time
    with RunStore(store_path) as store:
        store.start_run(spec.run_id, spec.canonical_json(), CLASSES, n_total=len(preds))
        store.add_predictions(spec.run_id, preds)
        store.finish_run(spec.run_id, "done", 0.0)
    return spec.run_id


def test_contain_and_strict_differ_as_the_paper_says() -> None:
    preds = [Prediction("1", 0, text="A tiger cat on a sofa.", choices=[0, 1, 2])]
    (contain,) = apply_matcher(preds, CLASSES, "contain")
    (strict,) = apply_matcher(preds, CLASSES, "strict")
    assert contain.pred == strict.pred == 2  # the longest name at word boundaries
    assert contain.hit is True and strict.hit is False
    assert contain.extra["match"] == "contain" and preds[0].pred is None  # copies, not edits


def test_nli_scores_each_pair_once_and_picks_the_most_entailed(nli_model) -> None:  # noqa: ANN001
    texts = ["It is a dog.", "It is a dog.", "meow", ""]
    choices = [[1, 3], [1, 3], None, [0, 1]]
    matcher = NLIMatcher(nli_model, batch_size=3)
    preds = matcher.map(texts, choices, CLASSES)
    assert len(matcher._cache) == 2 + 4  # identical answers share their pairs; "" costs nothing
    hypotheses = [f"This is a photo of a {c}." for c in CLASSES]
    cached = [matcher._cache[("meow", c)] for c in CLASSES]
    assert cached == pytest.approx(nli_model.entailment_probs(["meow"] * 4, hypotheses), abs=1e-5)
    assert preds[2] == max(range(4), key=lambda i: (cached[i], -i))
    assert preds[0] == preds[1] and preds[0] in (1, 3) and preds[3] is None


def test_nli_probabilities_do_not_depend_on_batching(nli_model) -> None:  # noqa: ANN001
    premises = ["a short one", "a much longer answer about a dog on a sofa", "bird"]
    hypotheses = ["This is a photo of a cat."] * 3
    one = nli_model.entailment_probs(premises, hypotheses, batch_size=1)
    three = nli_model.entailment_probs(premises, hypotheses, batch_size=3)
    assert one == pytest.approx(three, abs=1e-5)
    assert all(0.0 < p < 1.0 for p in one)


def test_hf_nli_checkpoint_loads_from_a_folder_and_finds_entailment(
    nli_model, tmp_path: Path  # noqa: ANN001
) -> None:
    folder = tmp_path / "nli"
    nli_model.model.config.label2id = {"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2}
    nli_model.model.save_pretrained(folder)
    nli_model.tokenizer.save_pretrained(folder)
    loaded = load_nli(f"hf:{folder}")
    assert loaded.entailment_id == 2 and loaded.name == f"hf:{folder}"
    pairs = (["It is a dog.", "meow"], ["This is a photo of a dog.", "This is a photo of a cat."])
    assert loaded.entailment_probs(*pairs) == pytest.approx(nli_model.entailment_probs(*pairs))
    with pytest.raises(ValueError, match="cannot load an NLI checkpoint"):
        load_nli(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="random:bart_nli"):
        load_nli("bart")


def test_embedding_matcher_finds_the_nearest_label(embed_matcher: EmbeddingMatcher) -> None:
    texts = ["The photo shows a small songbird on a branch.", "A puppy playing fetch."]
    assert embed_matcher.map(texts, [None, None], CLASSES) == [3, 1]


def test_match_ids_name_the_matcher_fully() -> None:
    assert match_id("nli", nli_model="hf:facebook/bart-large-mnli") == "nli"
    assert match_id("nli", nli_model="random:bart_nli") == "nli:random:bart_nli"
    assert match_id("embed", hypothesis="{}") == "embed:|{}"
    parsed = parse_match_id("nli:random:bart_nli|It is a {}.")
    assert (parsed.name, parsed.model, parsed.template) == ("nli", "random:bart_nli", "It is a {}.")
    with pytest.raises(ValueError, match="unknown matcher"):
        parse_match_id("regex")
    with pytest.raises(ValueError, match="must contain"):
        parse_match_id("nli:|no placeholder")


def test_rematch_stores_derived_runs_and_compares(
    tmp_path: Path, nli_model, embed_matcher: EmbeddingMatcher  # noqa: ANN001
) -> None:
    store_path = tmp_path / "runs.sqlite"
    run_id = _written_run(store_path)
    with RunStore(store_path) as store:
        before = [asdict(p) for p in store.predictions(run_id)]
        strict = rematch(store, run_id, "strict", out_dir=tmp_path / "out")
        nli = rematch(store, run_id, "nli", nli_model="random:bart_nli",
                      matcher=NLIMatcher(nli_model))  # fmt: skip
        embed = rematch(store, run_id, "embed", matcher=embed_matcher, out_dir=tmp_path / "out")
        assert [asdict(p) for p in store.predictions(run_id)] == before  # original untouched
        derived = {r["match"]: r["derived_run_id"] for r in (strict, nli, embed)}
        assert len(set(derived.values()) | {run_id}) == 4
        spec = store.get_run(derived["nli:random:bart_nli"]).spec
        assert spec["match"] == "nli:random:bart_nli" and spec["model"] == "hand:written"
        embedded = {p.example_id: p for p in store.predictions(derived["embed"])}
        again = rematch(store, run_id, "strict")
        analyses = store.list_analyses("rematch")
    assert strict["n_new"] == nli["n_new"] == 5 and again["n_new"] == 0
    assert embedded["1"].pred == 2 and embedded["3"].pred == 3 and embedded["4"].pred is None
    assert embedded["5"].ok is False and embedded["5"].pred is None
    rows = {r["match"]: r for r in embed["rows"]}
    assert list(rows) == ["contain", "strict", "nli:random:bart_nli", "embed"]
    # Containment counts 1 ("cat" in "tiger cat") and 3 ("bird" in "songbird"); strict neither.
    assert rows["contain"]["accuracy"] == pytest.approx(3 / 4)
    assert rows["strict"]["accuracy"] == pytest.approx(1 / 4)
    assert rows["strict"]["delta_accuracy"] == pytest.approx(-2 / 4)
    assert rows["embed"]["accuracy"] == pytest.approx(2 / 4)  # the songbird is a bird
    assert rows["strict"]["n_no_pred"] == 2 and rows["embed"]["n_no_pred"] == 1
    for row in rows.values():
        assert {"macro_precision", "macro_recall", "macro_f1"} <= row.keys()
    assert len(analyses) == 3  # strict (twice: same key, replaced), nli, embed
    for name in ("markdown", "csv", "figure"):
        assert Path(embed["files"][name]).stat().st_size > 0
    assert "embed" in Path(embed["files"]["markdown"]).read_text()


def test_rematch_refuses_runs_without_answer_texts(tmp_path: Path) -> None:
    spec = RunSpec(model="m", dataset="d", method="likelihood")
    with RunStore(tmp_path / "s.sqlite") as store:
        store.start_run(spec.run_id, spec.canonical_json(), CLASSES, n_total=0)
        with pytest.raises(ValueError, match="only generation runs"):
            rematch(store, spec.run_id, "strict")
        with pytest.raises(ValueError, match="no run"):
            rematch(store, "feedbeef", "strict")


def _image_folder(root: Path) -> Path:
    for name, colour in (("cat", (200, 40, 40)), ("dog", (40, 200, 40)), ("bird", (40, 40, 200))):
        (root / name).mkdir(parents=True)
        for i in range(2):
            image = Image.new("RGB", (16, 16), tuple(c + 20 * i for c in colour))
            image.save(root / name / f"{i}.png")
    return root


def test_rematch_command_on_a_random_llava_run(tmp_path: Path) -> None:
    store_path = tmp_path / "runs.sqlite"
    data = _image_folder(tmp_path / "images")
    spec = RunSpec(model="random:llava", dataset="imagefolder", method="generate",
                   setting="closed", k=2, max_new_tokens=6)  # fmt: skip
    config = RunConfig(store_path=store_path, data_root=str(data), progress=False, workers=1)
    result = run(spec, config, make_method)
    app = typer.Typer()
    app.command()(rematch_command)
    args = [result.run_id[:8], "--match", "nli", "--nli-model", "random:bart_nli",
            "--store", str(store_path), "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.output)
    with RunStore(store_path) as store:
        mapped = store.predictions(report["derived_run_id"])
    assert len(mapped) == 6 and report["n_new"] == 6
    for p in mapped:  # closed world: NLI picks among the two offered names only
        assert p.pred in p.choices and p.hit == (p.pred == p.label)
    assert [r["match"] for r in report["rows"]] == ["contain", "nli:random:bart_nli"]
    text = CliRunner().invoke(app, [result.run_id, "--match", "strict", "--store", str(store_path),
                                    "--out", str(tmp_path / "out2")])  # fmt: skip
    assert text.exit_code == 0 and "strict" in text.output and "rematch.png" in text.output


def test_eval_with_a_matcher_equals_rematch_of_the_contain_run(tmp_path: Path) -> None:
    """The runner hook (``with_answer_mapping`` around make_method) and ``rematch`` agree: the
    derived run of a contain run IS the run that `eval --match strict` makes."""
    store_path = tmp_path / "runs.sqlite"
    data = _image_folder(tmp_path / "images")
    config = RunConfig(store_path=store_path, data_root=str(data), progress=False, workers=1)
    contain = RunSpec(model="random:llava", dataset="imagefolder", method="generate",
                      setting="closed", k=2, max_new_tokens=4)  # fmt: skip
    strict = contain.model_copy(update={"match": "strict"})

    def build(model, class_names, spec):  # noqa: ANN001, ANN202
        return with_answer_mapping(make_method(model, class_names, spec), class_names, spec)

    contained = run(contain, config, build)
    evaluated = run(strict, config, build)
    assert all(p.extra.get("match") == "strict" for p in evaluated.predictions)
    with RunStore(store_path) as store:
        report = rematch(store, contained.run_id, "strict")
        assert report["derived_run_id"] == evaluated.run_id and report["n_new"] == 0
        originals = {p.example_id: p for p in store.predictions(contained.run_id)}
    for p in evaluated.predictions:
        assert p.text == originals[p.example_id].text  # same greedy answers
        assert p.hit == (p.pred == p.label)


def test_exact_match_is_the_papers_equality_rule():
    names = ["cat", "Cat Food", "tench", "tench"]
    answers = ["cat", " CAT FOOD\n", "a cat", "Tench.", "tench", "", "dog"]
    labels = [0, 1, 0, 2, 3, 0, 0]
    predictions = [
        Prediction(example_id=f"e{i}", label=label, text=text)
        for i, (text, label) in enumerate(zip(answers, labels, strict=True))
    ]
    mapped = apply_matcher(predictions, names, "exact")
    # The paper's evaluation of fine-tuned models: outputs stripped, then label == answer.
    want = [names[p.label].lower() == p.text.strip().lower() for p in predictions]
    assert [p.hit for p in mapped] == want == [True, True, False, False, True, False, False]
    assert [p.pred for p in mapped] == [0, 1, None, None, 2, None, None]
    assert all(p.extra["match"] == "exact" for p in mapped)
    closed = Prediction(example_id="c", label=2, text="tench", choices=[3, 0])
    assert apply_matcher([closed], names, "exact")[0].pred == 3  # only among the offered
    assert match_id("exact") == "exact"
    with pytest.raises(ValueError, match="takes no model"):
        match_id("exact:hf:x")


def test_finetune_rejects_an_unknown_evaluation_rule(tmp_path):
    from vlmclf.analysis.finetune.run import FinetuneRequest, FinetuneRuntime, run_finetune

    request = FinetuneRequest(model="random:llava", dataset="fashion_mnist", match="fuzzy")
    with pytest.raises(ValueError, match="unknown matcher 'fuzzy'"):
        run_finetune(request, FinetuneRuntime(out_dir=tmp_path))
