"""Class-name lists and K-way choice sampling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlmclf.data import CLASS_LISTS, canonical_indices, load_class_names, sample_choices
from vlmclf.data.classnames import unique_class_indices

EXPECTED_SIZES = {
    "imagenet": 1000,
    "flowers102": 102,
    "stanford_cars": 196,
    "caltech101": 100,
    "fashion_mnist": 10,
    "imagenet_first_synonym": 1000,
    "oxford_pets": 37,
    "cub200": 200,
    "fgvc_aircraft": 100,
    "fgvc_aircraft_family": 70,
    "fgvc_aircraft_manufacturer": 30,
    "food101": 101,
    "stanford_dogs": 120,
    "dtd": 47,
    "sun397": 397,
    "cifar10": 10,
    "cifar100": 100,
    "imagenet_r": 200,
    "imagenet_a": 200,
}


@pytest.mark.parametrize("name", CLASS_LISTS)
def test_shipped_lists(name: str) -> None:
    names = load_class_names(name)
    assert len(names) == EXPECTED_SIZES[name]
    assert all(isinstance(n, str) and n == n.strip() and n for n in names)


def test_shipped_lists_match_reference_copy() -> None:
    reference = Path("/work/shared/data/imagenet_classes.json")
    if not reference.is_file():
        pytest.skip("reference data folder not present")
    assert load_class_names("imagenet") == json.loads(reference.read_text())


def test_thesis_names_are_the_first_synonym_of_the_imagenet_label_text() -> None:
    names = load_class_names("imagenet_first_synonym")
    # "tench, Tinca tinca", "great white shark, white shark, man-eater, ...", the two cranes
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert names[134] == names[517] == "crane" and names[638] == names[639] == "maillot"
    assert len(set(names)) == 998 and all("," not in name for name in names)
    cleaned = load_class_names("imagenet")  # the CLIP-style list differs where it rewrote names
    assert names[0] == cleaned[0] and names[4] == "hammerhead" != cleaned[4]


def test_imagenet_duplicates_are_canonicalised() -> None:
    names = load_class_names("imagenet")
    assert names[657] == names[744] == "missile"
    assert names[836] == names[837] == "sunglasses"
    canon = canonical_indices(names)
    assert canon[744] == 657 and canon[837] == 836 and canon[657] == 657 and canon[5] == 5
    unique = unique_class_indices(names)
    assert len(unique) == 998 and 744 not in unique and 837 not in unique
    assert unique == sorted(unique)


def test_class_files_json_and_text(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps(["cat", "dog"]))
    (tmp_path / "c.txt").write_text("cat\n\n dog \nsea horse\n")
    assert load_class_names(str(tmp_path / "c.json")) == ["cat", "dog"]
    assert load_class_names(str(tmp_path / "c.txt")) == ["cat", "dog", "sea horse"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "entry 0"),
        ("[]", "non-empty list"),
        ('{"a": 1}', "non-empty list"),
        ("[", "JSON"),
    ],
)
def test_bad_class_files(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_class_names(str(tmp_path / "bad.json"))
    assert "bad.json" in str(info.value)


def test_unknown_class_list_names_the_choices() -> None:
    with pytest.raises(ValueError, match="imagenet, flowers102"):
        load_class_names("no_such_list")


def test_choices_include_truth_and_distinct_names() -> None:
    names = load_class_names("imagenet")
    for i in range(300):
        label = [657, 744, 836, 837][i % 4] if i % 3 == 0 else (i * 37) % 1000
        choices = sample_choices(label, names, 10, "random", 7, f"img{i}")
        assert len(choices) == 10 == len(set(choices))
        assert canonical_indices(names)[label] in choices
        assert len({names[c] for c in choices}) == 10
        assert not {744, 837} & set(choices)


def test_duplicate_label_is_offered_by_its_canonical_index() -> None:
    names = load_class_names("imagenet")
    choices = sample_choices(744, names, 5, "fixed", 0, "x")
    assert 657 in choices and 744 not in choices


def test_all_classes() -> None:
    names = load_class_names("imagenet")
    everything = sample_choices(3, names, None, "fixed", 0, "a")
    assert len(everything) == 998 and everything == unique_class_indices(names)
    assert sample_choices(3, names, 5000, "fixed", 0, "a") == everything
    shuffled = sample_choices(3, names, None, "random", 0, "a")
    assert sorted(shuffled) == everything and shuffled != everything


def test_fixed_order_is_index_order() -> None:
    names = load_class_names("flowers102")
    for i in range(20):
        choices = sample_choices(i, names, 7, "fixed", 1, f"id{i}")
        assert choices == sorted(choices) and i in choices


def test_deterministic_and_example_dependent() -> None:
    names = load_class_names("stanford_cars")
    first = [sample_choices(4, names, 5, "random", 0, f"e{i}") for i in range(50)]
    again = [sample_choices(4, names, 5, "random", 0, f"e{i}") for i in range(50)]
    assert first == again
    assert len({tuple(c) for c in first}) > 45
    other_seed = [sample_choices(4, names, 5, "random", 1, f"e{i}") for i in range(50)]
    assert other_seed != first
    # random order puts the true label in different positions
    assert len({c.index(4) for c in first}) > 1


def test_same_choices_in_another_process() -> None:
    code = (
        "import json; from vlmclf.data import sample_choices, load_class_names;"
        "n = load_class_names('imagenet');"
        "print(json.dumps([sample_choices(i, n, 6, 'random', 3, f'val/{i}') for i in range(20)]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    names = load_class_names("imagenet")
    here = [sample_choices(i, names, 6, "random", 3, f"val/{i}") for i in range(20)]
    assert json.loads(out.stdout) == here


@pytest.mark.parametrize("k", [0, 1, -3])
def test_k_below_two_is_rejected(k: int) -> None:
    with pytest.raises(ValueError, match="k must be at least 2"):
        sample_choices(0, ["a", "b", "c"], k, "fixed", 0, "x")


def test_bad_label_and_order() -> None:
    with pytest.raises(ValueError, match="outside"):
        sample_choices(3, ["a", "b", "c"], 2, "fixed", 0, "x")
    with pytest.raises(ValueError, match="order"):
        sample_choices(0, ["a", "b", "c"], 2, "sorted", 0, "x")  # type: ignore[arg-type]


def test_other_names_are_drawn_uniformly() -> None:
    names = ["a", "b", "c", "b", "d", "e", "f"]  # "b" twice: index 3 is never offered
    counts = dict.fromkeys(range(7), 0)
    for i in range(3000):
        choices = sample_choices(3, names, 3, "random", 0, str(i))
        assert 1 in choices and 3 not in choices and len(set(choices)) == 3
        for c in choices:
            counts[c] += 1
    assert counts[1] == 3000 and counts[3] == 0
    # 2 of the 5 other distinct names per draw: about 1200 each
    assert all(1100 < counts[c] < 1300 for c in (0, 2, 4, 5, 6)), counts
