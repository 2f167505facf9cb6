"""``--match zeroshot`` (the thesis's mapping, issue 25 item 7) against the real transformers
``pipeline("zero-shot-classification")`` object on the same saved tiny BART-MNLI-style model:
the same label for every one of 240 (answer, candidate set) cases."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from vlmclf.data.classnames import load_class_names
from vlmclf.methods.answer_mapping import (
    NLIMatcher,
    ZeroShotPipelineMatcher,
    make_matcher,
    match_id,
    pipeline_top_index,
)
from vlmclf.models.nli import load_nli

N_CASES = 240


@pytest.fixture(scope="module")
def saved_nli(tmp_path_factory) -> Path:
    """random:bart_nli saved as an hf: checkpoint with MNLI's label names."""
    folder = tmp_path_factory.mktemp("bart-mnli")
    nli = load_nli("random:bart_nli", seed=3)
    nli.model.config.label2id = {"contradiction": 0, "neutral": 1, "entailment": 2}
    nli.model.config.id2label = {0: "contradiction", 1: "neutral", 2: "entailment"}
    nli.model.save_pretrained(folder)
    nli.tokenizer.save_pretrained(folder)
    return folder


def _cases() -> tuple[list[str], list[str], list[list[int]]]:
    """(class names, answers, candidate index lists): answers that name a candidate, name
    another class, say something else, or are gibberish; 1 to 20 candidates."""
    rng = random.Random(25)
    names = list(dict.fromkeys(load_class_names("imagenet")))
    fillers = ["It is a", "I think this is a", "The object is", "", "Probably a"]
    answers, lists = [], []
    for case in range(N_CASES):
        k = 1 if case % 40 == 0 else rng.randint(2, 20)
        cands = rng.sample(range(len(names)), k)
        kind = case % 4
        if kind == 0:
            answer = f"{rng.choice(fillers)} {names[rng.choice(cands)]}.".strip()
        elif kind == 1:
            answer = f"{rng.choice(fillers)} {rng.choice(names)}".strip()
        elif kind == 2:
            answer = rng.choice(["a photo", "I cannot tell.", "animal", "blue", "sorry"])
        else:
            answer = " ".join(rng.choice(names).split()[:1] * rng.randint(1, 3))
        answers.append(answer)
        lists.append(cands)
    return names, answers, lists


def test_zeroshot_matcher_picks_the_pipelines_label_for_every_case(saved_nli):
    from transformers import pipeline

    names, answers, lists = _cases()
    classifier = pipeline("zero-shot-classification", model=str(saved_nli), device="cpu")
    expected = [
        classifier(answer, candidate_labels=[names[i] for i in cands])["labels"][0]
        for answer, cands in zip(answers, lists, strict=True)
    ]
    matcher = make_matcher(f"zeroshot:hf:{saved_nli}")
    assert isinstance(matcher, ZeroShotPipelineMatcher)
    got = matcher.map(answers, lists, names)
    assert [names[i] for i in got] == expected
    assert len({len(c) for c in lists}) >= 15 and len(expected) >= 200

    # the per-pair 3-way rule (kept as --match nli) is another rule: it disagrees here
    old = NLIMatcher(load_nli(f"hf:{saved_nli}"), "This example is {}.").map(answers, lists, names)
    assert sum(a != b for a, b in zip(old, got, strict=True)) >= 20


def test_ties_fall_as_in_the_pipeline():
    """Equal entailment logits: the pipeline's reversed argsort (the later candidate)."""
    tied = np.array([[[0.0, 0.0, 1.5], [0.0, 0.0, 1.5], [0.0, 0.0, -2.0]]], dtype=np.float32)
    scores = np.exp(tied[..., 2]) / np.exp(tied[..., 2]).sum(-1, keepdims=True)
    assert pipeline_top_index(tied, 2) == list(reversed(scores[0].argsort()))[0] == 1
    assert pipeline_top_index(tied[:, :1], 2) == 0


def test_zeroshot_match_ids_leave_the_pipelines_defaults_out():
    assert match_id("zeroshot", nli_model="hf:facebook/bart-large-mnli") == "zeroshot"
    assert match_id("zeroshot:hf:facebook/bart-large-mnli|This example is {}.") == "zeroshot"
    assert match_id("zeroshot", nli_model="random:bart_nli") == "zeroshot:random:bart_nli"
    assert match_id("nli:|This example is {}.") == "nli:|This example is {}."
