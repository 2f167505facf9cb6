"""Manifests as a user writes them: one file under several spellings, labels spelt two ways,
a file that is not UTF-8, templates files with mistakes. Each error names the file and line."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
from fixtures_data import save_image

from vlmclf.data import load_dataset
from vlmclf.data.label_check import DataWarning, near_duplicate_labels, spelling_key
from vlmclf.methods.prompts import load_templates


def write_manifest_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    for name in ("x.png", "y.png"):
        save_image(tmp_path / "imgs" / name, 1)
    return tmp_path


@pytest.mark.parametrize("second", ["./imgs/x.png", "imgs//x.png", "imgs/../imgs/x.png", "ABS"])
def test_one_file_under_two_spellings_cannot_carry_two_labels(images: Path, second: str) -> None:
    spelt = str(images / "imgs" / "x.png") if second == "ABS" else second
    manifest = write_manifest_lines(
        images / "m.jsonl",
        [
            {"image": "imgs/x.png", "label": "cat"},
            {"image": "imgs/y.png", "label": "cat"},
            {"image": spelt, "label": "dog"},
        ],
    )
    with pytest.raises(ValueError) as info:
        load_dataset(str(manifest))
    message = str(info.value)
    assert (
        f"{manifest} line 3: image {spelt!r} is the same file as 'imgs/x.png' at line 1" in message
    )
    assert "label 'cat' where this line says 'dog'" in message


def test_same_file_with_same_label_twice_is_still_a_duplicate(images: Path) -> None:
    manifest = write_manifest_lines(
        images / "m.jsonl",
        [{"image": "imgs/x.png", "label": "cat"}, {"image": "./imgs/x.png", "label": "cat"}],
    )
    with pytest.raises(ValueError, match="line 2: image './imgs/x.png' is the same file as"):
        load_dataset(str(manifest))


def test_paths_resolve_against_data_root_before_comparing(images: Path, tmp_path: Path) -> None:
    manifest = write_manifest_lines(
        tmp_path / "elsewhere.jsonl",
        [{"image": "imgs/x.png", "label": "cat"}, {"image": "imgs/y.png", "label": "dog"}],
    )
    assert len(load_dataset(str(manifest), data_root=str(images))) == 2


def test_non_utf8_manifest_names_file_and_line(tmp_path: Path) -> None:
    manifest = tmp_path / "latin1.jsonl"
    manifest.write_bytes(
        b'{"image": "a.png", "label": "cat"}\n{"image": "b.png", "label": "caf\xe9"}\n'
    )
    with pytest.raises(ValueError, match=r"latin1.jsonl line 2: not UTF-8 text \(byte 0xe9"):
        load_dataset(str(manifest))


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    manifest = tmp_path / "bom.jsonl"
    manifest.write_bytes(b'\xef\xbb\xbf{"image": "a.png", "label": "cat"}\n')
    assert load_dataset(str(manifest)).class_names == ["cat"]


def test_labels_spelt_two_ways_are_listed_in_one_warning(tmp_path: Path) -> None:
    labels = ["Golden retriever", "golden  retriever", "golden retreiver", "tabby", "tiger_cat",
              "tiger cat", "dog", "dot"]  # fmt: skip
    manifest = write_manifest_lines(
        tmp_path / "m.jsonl", [{"image": f"{i}.png", "label": lab} for i, lab in enumerate(labels)]
    )
    with pytest.warns(DataWarning) as caught:
        dataset = load_dataset(str(manifest))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert str(manifest) in message and "4 label pair(s)" in message
    assert "'Golden retriever' ~ 'golden  retriever' (case or spacing)" in message
    assert "'golden  retriever' ~ 'golden retreiver' (one letter)" in message
    assert "'tiger cat' ~ 'tiger_cat' (case or spacing)" in message
    assert "'dog'" not in message  # three letters: too short to call an edit a typo
    assert len(dataset.class_names) == len(labels)  # a warning, not a silent merge


def test_no_warning_for_a_given_class_list_or_distinct_labels(tmp_path: Path) -> None:
    manifest = write_manifest_lines(
        tmp_path / "m.jsonl",
        [{"image": "a.png", "label": "tench"}, {"image": "b.png", "label": "goldfish"}],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        load_dataset(str(manifest))


def test_digit_edits_are_different_classes() -> None:
    assert (
        near_duplicate_labels(["2012 BMW M3 coupe", "2012 BMW M5 coupe", "2011 BMW M3 coupe"]) == []
    )


def osa_distance(a: str, b: str) -> int:
    """Reference: optimal-string-alignment distance by the textbook O(len² ) table."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        table[i][0] = i
    for j in range(len(b) + 1):
        table[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                table[i][j] = min(table[i][j], table[i - 2][j - 2] + 1)
    return table[len(a)][len(b)]


def slow_near_duplicates(names: list[str]) -> set[tuple[str, str]]:
    unique = sorted(set(names))
    found = set()
    for i, a in enumerate(unique):
        for b in unique[i + 1 :]:
            ka, kb = spelling_key(a), spelling_key(b)
            long_enough = min(len(ka), len(kb)) >= 4
            if ka == kb or (long_enough and osa_distance(ka, kb) == 1):
                found.add((a, b))
    return found


def test_fast_pair_finder_matches_all_pairs_comparison() -> None:
    rng = random.Random(0)
    names = ["".join(rng.choice("abc A_") for _ in range(rng.randint(2, 7))) for _ in range(300)]
    fast = {(a, b) for a, b, _ in near_duplicate_labels(names)}
    assert fast == slow_near_duplicates(names)
    assert len(fast) > 50  # the alphabet is small enough that many pairs are found


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('["a photo of a {}.", ', r"t.json line 1 column \d+: invalid JSON"),
        ('["a {} and a {}."]', r"template 0 'a \{\} and a \{\}.' must contain exactly one"),
        ('["a photo of {name}."]', r"template 0 .* found \['\{name\}'\]"),
        ('["a photo.", "of a {}"]', r"template 0 'a photo.' must contain exactly one"),
        ('["a {} {"]', r"template 0 .*Single '\{' encountered"),
        ('{"t": "a {}"}', "expected a non-empty JSON list"),
        ("[3]", "template 0 must be a string"),
    ],
)
def test_bad_templates_file_names_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        load_templates(str(path))
    assert str(info.value).startswith(f"--templates {path}")


def test_templates_with_literal_braces_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text('["a {} in {{braces}}"]', encoding="utf-8")
    assert load_templates(str(path)) == ["a {} in {{braces}}"]
