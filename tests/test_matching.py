"""Answer matching: the paper's containment rule and the strict longest-name rule."""

from vlmclf.methods.matching import contains_name, match_label
from vlmclf.methods.prompts import build_question, load_templates

NAMES = [
    "cat",
    "tiger cat",
    "tiger",
    "T-shirt/top",
    "missile",
    "sunglasses",
    "missile",
    "sunglasses",
]


def test_containment_is_case_insensitive_substring():
    assert contains_name("It is a TIGER CAT.", "tiger cat")
    assert contains_name("concatenate", "cat")  # the paper's rule is a plain substring test
    assert not contains_name("a dog", "cat")


def test_longest_name_wins_at_word_boundaries():
    assert match_label("This is a tiger cat on a mat.", NAMES) == 1
    assert match_label("a tiger", NAMES) == 2
    assert match_label("concatenate", NAMES) is None
    assert match_label("a t-shirt/top, folded", NAMES) == 3


def test_duplicate_names_resolve_to_first_index():
    assert match_label("a missile launch", NAMES) == 4
    assert match_label("dark sunglasses", NAMES, candidates=[7, 0]) == 5


def test_candidates_restrict_the_search():
    # "tiger cat" is not offered: of "cat" and "tiger", the longer name wins
    assert match_label("a tiger cat", NAMES, candidates=[0, 2]) == 2
    assert match_label("a dog", NAMES, candidates=[0]) is None


def test_ties_in_length_go_to_the_earliest_occurrence():
    names = ["dog", "cat"]
    assert match_label("a cat and a dog", names) == 1
    assert match_label("a dog and a cat", names) == 0


def test_questions_follow_the_paper():
    assert build_question("base") == "What type of object is in this photo?"
    closed = build_question("alt1", ["cat", "dog"], cot=True)
    assert (
        closed == 'Identify the object in this image. Choose one from "cat, dog". '
        "Let's think step by step."
    )
    assert build_question("Name the animal.") == "Name the animal."


def test_templates(tmp_path):
    assert load_templates("paper") == ["a photo of a {}."]
    assert len(load_templates("imagenet80")) == 80
    path = tmp_path / "t.json"
    path.write_text('["a {} photo", "no placeholder"]')
    try:
        load_templates(str(path))
    except ValueError as err:
        assert "template 1" in str(err)
    else:
        raise AssertionError("a template without {} must be rejected")
