"""The organism's caption data: the class-frequency knob and the captions it produces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmclf.data.classnames import load_class_names
from vlmclf.organism.captions import (
    INSTRUCTIONS,
    build_caption_samples,
    caption_frequencies,
    vlm_caption,
)

NAMES = load_class_names("fashion_mnist")


def test_zipf_ranks_a_seeded_permutation_with_tenfold_spread():
    freq = caption_frequencies(NAMES, 3200, "zipf", seed=0)
    assert sorted(freq.ranking) == sorted(NAMES)
    assert sum(freq.counts.values()) == 3200
    ranked = [freq.counts[name] for name in freq.ranking]
    assert ranked == sorted(ranked, reverse=True)
    assert 9.5 < ranked[0] / ranked[-1] < 10.5
    assert caption_frequencies(NAMES, 3200, "zipf", seed=0) == freq
    assert caption_frequencies(NAMES, 3200, "zipf", seed=1).ranking != freq.ranking


def test_uniform_and_file_frequencies(tmp_path):
    uniform = caption_frequencies(NAMES, 1003, "uniform")
    assert set(uniform.counts.values()) <= {100, 101} and sum(uniform.counts.values()) == 1003
    path = tmp_path / "freq.json"
    path.write_text(json.dumps({name: (3 if name == "Bag" else 1) for name in NAMES}))
    from_file = caption_frequencies(NAMES, 120, str(path))
    assert from_file.counts["Bag"] == 30 and from_file.counts["Coat"] == 10
    assert from_file.as_record()["total"] == 120


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "JSON object"),
        ('{"Bag": 1}', "missing"),
        ("{not json", "line 1"),
        (json.dumps({name: -1 for name in NAMES}), "non-negative"),
        (json.dumps({name: 0 for name in NAMES}), "sum to zero"),
    ],
)
def test_bad_frequency_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "weights.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        caption_frequencies(NAMES, 100, str(path))
    assert str(path) in str(error.value)


def test_unknown_freq_and_too_few_captions_are_refused():
    with pytest.raises(ValueError, match="'zipf', 'uniform' or a JSON file"):
        caption_frequencies(NAMES, 100, "zipff")
    with pytest.raises(ValueError, match="cannot cover"):
        caption_frequencies(NAMES, 5, "uniform")


def test_caption_samples_follow_the_counts_and_name_the_class():
    labels = np.repeat(np.arange(10), 50)
    freq = caption_frequencies(NAMES, 200, "zipf", seed=3)
    samples = build_caption_samples(labels, NAMES, freq, seed=3)
    assert len(samples) == 200
    for label, name in enumerate(NAMES):
        mine = [s for s in samples if s.label == label]
        assert len(mine) == freq.counts[name]
        assert len({s.index for s in mine}) == min(len(mine), 50)  # distinct images first
        assert all(labels[s.index] == label and name.lower() in s.caption.lower() for s in mine)
    assert {s.instruction for s in samples} <= set(INSTRUCTIONS)
    assert build_caption_samples(labels, NAMES, freq, seed=3) == samples


def test_captions_use_the_right_article():
    assert vlm_caption("This is {a} {name}.", "Ankle boot") == "This is an ankle boot."
    assert vlm_caption("{A} {name}.", "T-shirt/top") == "A t-shirt/top."
