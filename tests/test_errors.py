"""Open-world error types (`vlmclf errors`): hand-built hierarchies, FGVC-Aircraft's levels,
WordNet for ImageNet (offline, from Debian's wordnet-base), and stored runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vlmclf.analysis.views  # noqa: F401 - registers the report's views
from vlmclf.analysis.errors import (
    ERROR_TYPES,
    ErrorTyper,
    answer_label_similarity,
    error_types,
    hierarchy_for_run,
)
from vlmclf.cli import app
from vlmclf.data.classnames import load_class_names
from vlmclf.data.hierarchy import (
    Hierarchy,
    aircraft_hierarchy,
    from_parent_map,
    imagenet_wnids,
    load_hierarchy_file,
    open_wordnet,
    read_aircraft_levels,
    wnids_for_classes,
    wordnet_available,
)
from vlmclf.records import Prediction
from vlmclf.report.analyses import view_for
from vlmclf.spec import RunSpec
from vlmclf.store import RunStore

TREE = {
    "golden retriever": "retriever", "labrador retriever": "retriever", "retriever": "dog",
    "dog": "animal", "cat": "animal", "field golden retriever": "golden retriever",
}  # fmt: skip
CLASSES = ["golden retriever", "labrador retriever", "cat"]
ANSWERS = [  # (answer for a golden retriever, type, levels up, right at the parent level)
    ("A golden retriever.", "exact", None, True),
    ("It's a dog lying next to a golden retriever", "exact", None, True),  # longest name first
    ("a retriever", "coarser", 1, True),
    ("Dog.", "coarser", 2, False),
    ("some animal", "coarser", 3, False),
    ("a field golden retriever", "finer", None, True),
    ("a Labrador Retriever", "sibling", None, True),
    ("a cat", "other_class", None, False),
    ("a hotdog stand", "no_class", None, False),  # "dog" only at word boundaries
    ("", "no_class", None, False),
    (None, "no_class", None, False),
]
WORDNET_MISSING = wordnet_available()


@pytest.fixture(scope="module")
def imagenet_typer() -> ErrorTyper:
    """ImageNet's classes in WordNet 3.0, built once for the module (a few seconds)."""
    if WORDNET_MISSING is not None:
        pytest.skip(WORDNET_MISSING)
    return ErrorTyper(hierarchy_for_run(load_class_names("imagenet")))


def test_every_type_is_reached_on_a_hand_built_tree() -> None:
    typer_ = ErrorTyper(from_parent_map(TREE, CLASSES))
    for text, kind, levels, at_parent in ANSWERS:
        assert typer_.classify(text, 0) == (kind, levels, at_parent), text
    assert {kind for _, kind, _, _ in ANSWERS} == set(ERROR_TYPES)
    assert typer_.classify("a golden retriever", 2)[0] == "other_class"  # true class: cat


def test_a_tree_and_a_class_list_that_differ_in_case_are_one_tree() -> None:
    lowered = {child.lower(): parent.lower() for child, parent in TREE.items()}
    typer_ = ErrorTyper(from_parent_map(lowered, ["Golden Retriever", "Labrador Retriever", "Cat"]))
    for text, kind, levels, at_parent in ANSWERS:
        assert typer_.classify(text, 0) == (kind, levels, at_parent), text


def test_a_name_on_two_nodes_takes_the_type_closest_to_the_truth() -> None:
    tree = Hierarchy(
        names={"bird": ("bird",), "crane.bird": ("crane", "grus"), "crane.machine": ("crane",),
               "machine": ("machine",), "heron": ("heron",)},
        parents={"crane.bird": ("bird",), "heron": ("bird",), "crane.machine": ("machine",)},
        class_nodes=("crane.bird", "crane.machine", "heron"), source="hand",
    )  # fmt: skip
    typer_ = ErrorTyper(tree)
    assert typer_.classify("a crane", 0)[0] == "exact"
    assert typer_.classify("a crane", 1)[0] == "exact"
    assert typer_.classify("a crane", 2)[0] == "sibling"  # the bird beats the machine
    assert typer_.classify("Grus", 1)[0] == "other_class"


def test_hierarchy_file_errors_name_the_file_line_and_entry(tmp_path: Path) -> None:
    good = tmp_path / "tree.json"
    good.write_text(json.dumps(TREE))
    assert load_hierarchy_file(good, CLASSES).parents["retriever"] == ("dog",)
    bad = tmp_path / "bad.json"
    bad.write_text('{\n "a": "b",\n "c": \n}')
    with pytest.raises(ValueError, match=r"bad.json:4: invalid JSON"):
        load_hierarchy_file(bad, CLASSES)
    bad.write_text('{"a": 3}')
    with pytest.raises(ValueError, match=r"bad.json: entry 'a': the parent must be"):
        load_hierarchy_file(bad, CLASSES)
    bad.write_text('{"a": "b", "b": "c", "c": "a"}')
    with pytest.raises(ValueError, match="run in a circle"):
        load_hierarchy_file(bad, CLASSES)
    bad.write_text('["a"]')
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_hierarchy_file(bad, CLASSES)


def _aircraft_folder(root: Path) -> Path:
    """FGVC-Aircraft's data/ files for five images in two splits."""
    rows = [  # image id, variant, family, manufacturer
        ("0001", "737-300", "Boeing 737", "Boeing"), ("0002", "737-400", "Boeing 737", "Boeing"),
        ("0003", "747-400", "Boeing 747", "Boeing"), ("0004", "A320", "A320", "Airbus"),
        ("0005", "A321", "A320", "Airbus"),
    ]  # fmt: skip
    for split, part in (("trainval", rows[:3]), ("test", rows[3:])):
        for level, column in (("variant", 1), ("family", 2), ("manufacturer", 3)):
            lines = [f"{row[0]} {row[column]}" for row in part]
            (root / f"images_{level}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_aircraft_levels_are_joined_on_the_image_id(tmp_path: Path) -> None:
    variant_family, family_manufacturer = read_aircraft_levels(_aircraft_folder(tmp_path))
    assert variant_family == {"737-300": "Boeing 737", "737-400": "Boeing 737",
                              "747-400": "Boeing 747", "A320": "A320", "A321": "A320"}
    assert family_manufacturer == {"Boeing 737": "Boeing", "Boeing 747": "Boeing",
                                   "A320": "Airbus"}  # fmt: skip
    variants = ["737-300", "737-400", "747-400", "A320", "A321"]
    tree = aircraft_hierarchy(variant_family, family_manufacturer, variants)
    typer_ = ErrorTyper(tree)
    assert typer_.classify("a Boeing 737-300", 0) == ("exact", None, True)
    assert typer_.classify("a Boeing 737", 0) == ("coarser", 1, True)
    assert typer_.classify("a Boeing airliner", 0) == ("coarser", 2, False)
    assert typer_.classify("737-400", 0)[0] == "sibling"
    assert typer_.classify("an Airbus A321", 0)[0] == "other_class"
    assert typer_.classify("an Airbus A321", 3)[0] == "sibling"  # A320 the family holds A321
    assert hierarchy_for_run(variants, tmp_path).source == "FGVC-Aircraft levels"


def test_aircraft_files_with_a_bad_line_or_two_parents_fail_naming_them(tmp_path: Path) -> None:
    folder = _aircraft_folder(tmp_path)
    (folder / "images_variant_test.txt").write_text("0004 A320\n0005 A320\n")
    (folder / "images_family_test.txt").write_text("0004 A320\n0005 A330\n")
    with pytest.raises(ValueError, match="'A320' is under both 'A320' and 'A330' \\(image 0005"):
        read_aircraft_levels(folder)
    (folder / "images_variant_test.txt").write_text("0004 A320\n0005\n")
    with pytest.raises(ValueError, match=r"images_variant_test.txt:2: expected"):
        read_aircraft_levels(folder)


def test_imagenet_class_lists_map_to_their_wnids() -> None:
    names = load_class_names("imagenet")
    wnids = wnids_for_classes(names)
    assert wnids is not None and wnids[0] == "n01440764" and wnids[207] == "n02099601"
    assert wnids_for_classes(load_class_names("imagenet_first_synonym")) == list(imagenet_wnids())
    assert wnids_for_classes(["goldfish", "tench"]) == ["n01443537", "n01440764"]
    assert wnids_for_classes(["goldfish", "spaceship"]) is None
    with pytest.raises(ValueError, match="not ImageNet's"):
        hierarchy_for_run(["goldfish", "spaceship"])


@pytest.mark.skipif(WORDNET_MISSING is not None, reason=str(WORDNET_MISSING))
def test_every_shipped_wnid_is_the_wordnet_synset_of_its_class() -> None:
    wordnet = open_wordnet()
    first_synonyms = load_class_names("imagenet_first_synonym")
    for wnid, name in zip(imagenet_wnids(), first_synonyms, strict=True):
        synset = wordnet.synset_from_pos_and_offset("n", int(wnid[1:]))
        lemmas = {lemma.replace("_", " ").lower() for lemma in synset.lemma_names()}
        assert name.lower() in lemmas, (wnid, name, lemmas)


@pytest.mark.skipif(WORDNET_MISSING is not None, reason=str(WORDNET_MISSING))
def test_wordnet_types_imagenet_answers_offline(imagenet_typer: ErrorTyper) -> None:
    names = load_class_names("imagenet")
    typer_, tree = imagenet_typer, imagenet_typer.hierarchy
    assert tree.source.startswith("WordNet 3.0")
    golden = names.index("Golden Retriever")
    assert tree.class_nodes[golden] == "golden_retriever.n.01"
    assert tree.ancestors("golden_retriever.n.01")["retriever.n.01"] == 1
    assert typer_.classify("This is a golden retriever.", golden) == ("exact", None, True)
    assert typer_.classify("A retriever", golden) == ("coarser", 1, True)
    assert typer_.classify("It is a dog.", golden)[:2] == ("coarser", 4)
    assert typer_.classify("a Labrador retriever", golden)[0] == "sibling"
    assert typer_.classify("a tabby cat", golden)[0] == "other_class"
    assert typer_.classify("qwertyuiop", golden)[0] == "no_class"


@pytest.mark.skipif(WORDNET_MISSING is not None, reason=str(WORDNET_MISSING))
def test_the_first_word_shortcut_finds_what_the_full_strict_search_finds(
    imagenet_typer: ErrorTyper,
) -> None:
    from vlmclf.methods.matching import match_label

    typer_ = imagenet_typer
    every_name = sorted(typer_.hierarchy.name_index())
    rng = np.random.default_rng(0)
    fillers = ["a", "photo of", "the", "-", "(", ")", "dog-like", "tiger cat's", ",", "x"]
    for _ in range(300):
        parts = [str(rng.choice(every_name)) if rng.random() < 0.4 else str(rng.choice(fillers))
                 for _ in range(rng.integers(1, 7))]  # fmt: skip
        text = " ".join(parts) if rng.random() < 0.7 else "".join(parts)
        full = match_label(text, every_name)
        expected = [] if full is None else typer_._nodes_of[every_name[full]]
        assert typer_.answer_nodes(text) == expected, text


def _stored_run(path: Path, answers: list[tuple[str | None, int]]) -> str:
    spec = RunSpec(model="hand:written", dataset="dogs", method="generate")
    preds = [Prediction(str(i), label, text=text) for i, (text, label) in enumerate(answers)]
    preds.append(Prediction.failed("broken", 0, "bad image"))  # the dataset's: not typed
    with RunStore(path) as store:
        store.start_run(spec.run_id, spec.canonical_json(), CLASSES, n_total=len(preds))
        store.add_predictions(spec.run_id, preds)
        store.finish_run(spec.run_id, "done", 0.0)
    return spec.run_id


def test_a_stored_run_is_summarized_with_intervals(tmp_path: Path) -> None:
    answers = [(text, 0) for text, _, _, _ in ANSWERS] * 3
    store_path = tmp_path / "runs.sqlite"
    run_id = _stored_run(store_path, answers)
    with RunStore(store_path) as store:
        result = error_types(store, run_id, from_parent_map(TREE, CLASSES), n_boot=500)
        (record,) = store.list_analyses("errors")
    expected = {kind: 3 * sum(k == kind for _, k, _, _ in ANSWERS) for kind in ERROR_TYPES}
    assert result["n"] == 33 and result["types"] == expected
    for kind in ERROR_TYPES:
        share = result["shares"][kind]
        assert share["share"] == pytest.approx(expected[kind] / 33)
        assert share["ci"][0] <= share["share"] <= share["ci"][1]
    right_at_parent = 3 * sum(ok for _, _, _, ok in ANSWERS)
    assert result["parent_accuracy"]["value"] == pytest.approx(right_at_parent / 33)
    assert result["coarser_levels"] == {"1": 3, "2": 3, "3": 3}
    assert record.result["types"] == expected


def test_similarity_is_the_cosine_of_minilm_embeddings() -> None:
    from vlmclf.methods.answer_mapping import default_embed_model, load_sentence_encoder

    encoder = load_sentence_encoder(default_embed_model())
    texts = ["a golden retriever", "a dog", "a red sports car", ""]
    labels = ["golden retriever"] * 4
    sims = answer_label_similarity(encoder, texts, labels)
    raw = encoder.encode(texts[:3] + labels[:1], convert_to_numpy=True)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert sims[:3] == pytest.approx(unit[:3] @ unit[3], abs=1e-5)
    assert sims[3] == 0.0 and sims[0] > sims[1] > sims[2]


def test_cli_json_report_view_and_figure(tmp_path: Path) -> None:
    tree_file = tmp_path / "tree.json"
    tree_file.write_text(json.dumps(TREE))
    store_path = tmp_path / "runs.sqlite"
    run_id = _stored_run(store_path, [(text, 0) for text, _, _, _ in ANSWERS])
    result = CliRunner().invoke(app, [
        "errors", run_id[:8], "--hierarchy", str(tree_file), "--store", str(store_path),
        "--out", str(tmp_path / "out"), "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # stderr may carry a model-loading bar
    assert payload["run_id"] == run_id and payload["n"] == len(ANSWERS)
    assert set(payload["types"]) == set(ERROR_TYPES)
    assert -1 <= payload["similarity"]["mean"] <= 1
    assert Path(payload["figure"]).stat().st_size > 1000
    view = view_for("errors")
    assert view.table is not None and view.draw is not None
    assert [row["type"] for row in view.table(payload)] == list(ERROR_TYPES)
    assert view.draw(payload, tmp_path)[0].is_file()
    text = CliRunner().invoke(app, [
        "errors", run_id, "--hierarchy", str(tree_file), "--store", str(store_path),
        "--no-similarity", "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    assert text.exit_code == 0 and "accuracy at the parent level" in text.output
    missing = CliRunner().invoke(app, ["errors", run_id, "--store", str(store_path)])
    assert missing.exit_code == 2 and "not ImageNet's" in missing.output


def test_the_report_gives_a_typed_run_a_column_per_error_type(tmp_path: Path) -> None:
    from vlmclf.report.html import render_report

    store_path = tmp_path / "runs.sqlite"
    run_id = _stored_run(store_path, [(text, 0) for text, _, _, _ in ANSWERS])
    with RunStore(store_path) as store:
        error_types(store, run_id, from_parent_map(TREE, CLASSES), n_boot=50)
    page = render_report(store_path)
    run_section = page[page.index(f'id="run-{run_id}"'):]
    head = run_section[:run_section.index("</thead>")]
    assert all(f"<th>{kind}</th>" for kind in ERROR_TYPES)
    assert [kind for kind in ERROR_TYPES if f"<th>{kind}</th>" in head] == list(ERROR_TYPES)
    assert '<h3>errors ' in page and 'alt="errors figure"' in page
