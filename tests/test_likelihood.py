"""Class-name likelihood on tiny random models of every VLM family: the fast scores (one prefill,
one packed trie pass, or cache replication) equal lmms-eval's one-full-forward-per-class scores
within 1e-4 nats for every class of a 100-name list; and the method around them (tokenization,
duplicates, closed world, aggregation, guidance) behaves as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlmclf.data.classnames import load_class_names
from vlmclf.data.types import Example
from vlmclf.methods.base import LoadedExample
from vlmclf.methods.likelihood.method import LikelihoodMethod
from vlmclf.methods.likelihood.reference import full_forward_log_probs, sequential_log_probs
from vlmclf.methods.likelihood.targets import (
    append_tokens,
    continuation_tokens,
    trim_tokens,
)
from vlmclf.methods.likelihood.trie import TokenTrie
from vlmclf.models import load_model
from vlmclf.spec import RunSpec

FAMILIES = [
    "llava", "llava_next", "blip2", "instructblip", "qwen2_vl", "qwen2_5_vl", "llava_onevision",
    "gemma3", "qwen3_vl", "internvl", "idefics3", "smolvlm", "paligemma", "mllama", "mistral3",
    "pixtral",
]  # fmt: skip
TOLERANCE = 1e-4
HAND_PICKED = [
    "cat", "cat food", "catamaran", "tench", "tench", "a", "x", "gold", "goldfish",
    "golden retriever", "golden eagle", "Labrador retriever", "great", "great white shark",
    "great grey owl", "hot dog", "hot pot", "hotdog", "ice", "ice cream", "ice bear",
    "a very long class name made of many words, so that it spans many tokens (really many)",
]  # fmt: skip


def hundred_names() -> list[str]:
    """Hand-picked hard cases, then ImageNet names spread over the list, 100 in all."""
    imagenet = load_class_names("imagenet")
    names = list(HAND_PICKED)
    for name in imagenet[:: len(imagenet) // 90]:
        if len(names) == 100:
            break
        if name not in names:
            names.append(name)
    return names


NAMES = hundred_names()


def make_batch(images: list[Image.Image], labels: list[int]) -> list[LoadedExample]:
    return [
        LoadedExample(Example(f"ex{i}", label, "test", f"mem:{i}", lambda: None), image)
        for i, (image, label) in enumerate(zip(images, labels, strict=True))
    ]


def spec_for(family: str, **fields) -> RunSpec:
    return RunSpec(model=f"random:{family}", dataset="mem", method="likelihood", **fields)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Two images of different sizes: LLaVA-NeXT and Qwen2-VL give them different token counts."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (70, 30, 3), dtype=np.uint8)),
    ]


@pytest.fixture(scope="module")
def models():
    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_model(f"random:{family}", dtype="float32", seed=0)
        return cache[family]

    return get


def reference_log_probs(
    model, method: LikelihoodMethod, image, question: str, names
) -> dict[str, list[float]]:
    """lmms-eval's way: for each name, prompt + name through the model's ordinary forward."""
    continuations = method.continuations_for(question, tuple(names))
    inputs = prompt_inputs(model, method, image, question)
    values = full_forward_log_probs(model.model, inputs, [continuations[n] for n in continuations])
    return dict(zip(continuations, values, strict=True))


def prompt_inputs(model, method: LikelihoodMethod, image, question: str) -> dict:
    """The processor's prompt edited into the scoring context (trailing whitespace dropped,
    answer prefix appended)."""
    context = method.prompt_for(question)
    inputs = trim_tokens(dict(model.build_inputs([image], [question])), context.trim)
    return append_tokens(inputs, context.answer)


def max_difference(got: dict[str, list[float]], want: dict[str, list[float]]) -> float:
    assert got.keys() == want.keys()
    worst = 0.0
    for name in want:
        assert len(got[name]) == len(want[name]), name
        worst = max(worst, *(abs(a - b) for a, b in zip(got[name], want[name], strict=True)))
    return worst


def test_name_list_has_the_hard_cases(models):
    tokenizer = models("llava").tokenizer
    sequences = continuation_tokens(tokenizer, "USER: <image>\nQ? ASSISTANT:", NAMES)
    lengths = [len(s) for s in sequences.values()]
    assert len(NAMES) == 100 and len(set(NAMES)) == 99  # one duplicate
    assert min(lengths) == 1 and max(lengths) >= 20
    assert sequences["cat food"][: len(sequences["cat"])] == sequences["cat"]  # a prefix name
    trie = TokenTrie.build(list(sequences.values()))
    assert trie.num_nodes < sum(lengths)  # shared prefixes


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_scores_equal_full_forward_per_class(family, models, images):
    model = models(family)
    labels = [NAMES.index("tench"), 3]
    batch = make_batch(images, labels)
    results = {}
    for strategy in ("tree", "replicate"):
        method = LikelihoodMethod(
            model, NAMES, spec_for(family), strategy=strategy, max_pass_tokens=256
        )
        results[strategy] = method.predict(batch)
    question = method.question_for(None)
    for b, image in enumerate(images):
        want = reference_log_probs(model, method, image, question, NAMES)
        for strategy, predictions in results.items():
            got = predictions[b].extra["token_logprobs"]
            assert max_difference(got, want) < TOLERANCE, (family, strategy, b)
            scores = predictions[b].scores
            for i, name in enumerate(NAMES):
                assert scores[i] == pytest.approx(sum(want[name]), abs=TOLERANCE * len(want[name]))
    prediction = results["tree"][0]
    assert prediction.scores[3] == prediction.scores[4]  # "tench" twice: one score
    assert prediction.pred == int(np.argmax(np.array(prediction.scores)))
    assert prediction.hit == (NAMES[prediction.pred] == "tench")


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "mllama"])
def test_paper_sequential_way_agrees(family, models, images):
    model = models(family)
    method = LikelihoodMethod(model, NAMES, spec_for(family))
    question = method.question_for(None)
    names = NAMES[:30]
    continuations = method.continuations_for(question, tuple(names))
    prefix = method.scorer.prefill(prompt_inputs(model, method, images[1], question))
    got = sequential_log_probs(method.scorer, prefix, [continuations[n] for n in continuations])
    want = reference_log_probs(model, method, images[1], question, names)
    assert max_difference(dict(zip(continuations, got, strict=True)), want) < TOLERANCE


def test_comparison_is_sensitive_to_positions_and_mask(models, images, monkeypatch):
    """The exactness test can fail: a position off by one or a sibling made visible shows."""
    model = models("llava")
    method = LikelihoodMethod(model, NAMES, spec_for("llava"), strategy="tree")
    question = method.question_for(None)
    want = reference_log_probs(model, method, images[0], question, NAMES)
    batch = make_batch(images[:1], [0])
    positions = TokenTrie.positions
    monkeypatch.setattr(
        TokenTrie, "positions", lambda self, n, device="cpu": positions(self, n + 1, device)
    )
    shifted = method.predict(batch)[0].extra["token_logprobs"]
    monkeypatch.setattr(TokenTrie, "positions", positions)
    ancestors = TokenTrie.ancestor_matrix
    monkeypatch.setattr(
        TokenTrie, "ancestor_matrix", lambda self, device="cpu": ancestors(self, device) | True
    )
    method = LikelihoodMethod(model, NAMES, spec_for("llava"), strategy="tree")  # masks are kept
    leaky = method.predict(batch)[0].extra["token_logprobs"]
    assert max_difference(shifted, want) > 3 * TOLERANCE
    assert max_difference(leaky, want) > 3 * TOLERANCE


@pytest.mark.parametrize("family", ["llava", "blip2", "qwen2_vl"])
def test_closed_world_scores_only_the_offered_names_exactly(family, models, images):
    model = models(family)
    spec = spec_for(family, setting="closed", k=5, order="random", seed=3)
    method = LikelihoodMethod(model, NAMES, spec)
    batch = make_batch(images, [NAMES.index("goldfish"), 0])
    for item, prediction in zip(batch, method.predict(batch), strict=True):
        offered = {NAMES[i] for i in prediction.choices}
        assert len(prediction.choices) == 5 and NAMES[item.example.label] in offered
        assert set(prediction.extra["token_logprobs"]) == offered
        assert all(
            (s is None) == (NAMES[i] not in offered) for i, s in enumerate(prediction.scores)
        )
        assert NAMES[prediction.pred] in offered
        question = method.question_for(prediction.choices)
        assert "Choose one from" in question
        want = reference_log_probs(model, method, item.image, question, list(offered))
        assert max_difference(prediction.extra["token_logprobs"], want) < TOLERANCE


def test_mean_aggregate_and_options_are_validated(models, images):
    model = models("llava")
    batch = make_batch(images[:1], [0])
    summed = LikelihoodMethod(model, NAMES, spec_for("llava")).predict(batch)[0]
    mean = LikelihoodMethod(model, NAMES, spec_for("llava", options={"agg": "mean"})).predict(
        batch
    )[0]
    for i, name in enumerate(NAMES):
        values = summed.extra["token_logprobs"][name]
        assert mean.scores[i] == pytest.approx(sum(values) / len(values), abs=1e-9)
    for options, match in [
        ({"agg": "max"}, "agg"),
        ({"cfg": "high"}, "cfg"),
        ({"calibration": "dataset_mean"}, "needs --cfg"),
        ({"calibration": "platt"}, "calibration"),
        ({"temperature": 1}, "unknown option"),
    ]:
        with pytest.raises(ValueError, match=match):
            LikelihoodMethod(model, NAMES, spec_for("llava", options=options))


def test_fixed_prompt_continuations_are_what_the_model_emits_next(models):
    """``continuation_tokens`` (fine-tuning targets, ImageWikiQA letters) keeps the prompt as it
    is prefilled; the likelihood method's own split is tested in test_likelihood_tokenization."""
    tokenizer = models("qwen2_vl").tokenizer

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    after_colon = continuation_tokens(tokenizer, "Question: what? Answer:", ["golden eagle"])
    context = ids("Question: what? Answer:")
    assert (
        list(after_colon["golden eagle"])
        == ids("Question: what? Answer: golden eagle")[len(context) :]
    )
    after_newline = continuation_tokens(tokenizer, "<|im_start|>assistant\n", ["golden eagle"])
    assert list(after_newline["golden eagle"]) == ids("golden eagle")  # no leading space


@pytest.mark.parametrize("family", ["llava", "blip2", "qwen2_vl", "mllama"])
def test_guidance_uses_a_real_image_free_pass_once(family, models, images):
    model = models(family)
    t = 1.7
    method = LikelihoodMethod(model, NAMES, spec_for(family, options={"cfg": t}))
    batch = make_batch(images, [0, 1])
    first = method.predict(batch)
    second = method.predict(batch[:1])
    assert len(method._image_free) == 1  # once per (prompt, class list)
    question = method.question_for(None)
    continuations = method.continuations_for(question, tuple(dict.fromkeys(NAMES)))
    probe = prompt_inputs(model, method, images[0], question)
    text_ids = [t for t in probe["input_ids"][0].tolist() if t not in method.target.image_token_ids]
    assert len(text_ids) < probe["input_ids"].shape[1]
    decoder = method.scorer.decoder
    for name in ("cat", "great white shark", NAMES[-1]):
        tokens = list(continuations[name])
        full = torch.tensor([text_ids + tokens])
        with torch.no_grad():
            logits = decoder(input_ids=full).logits[0, len(text_ids) - 1 : -1].float()
        want = torch.log_softmax(logits, -1)[
            torch.arange(len(tokens)), torch.tensor(tokens)
        ].tolist()
        got = first[0].extra["image_free"][name]
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < TOLERANCE
        image = first[0].extra["token_logprobs"][name]
        assert first[0].scores[NAMES.index(name)] == pytest.approx(
            t * sum(image) + (1 - t) * sum(got), abs=1e-9
        )
    assert second[0].extra["image_free"] == first[0].extra["image_free"]


def test_preflight_warns_about_fallback_and_context(models):
    blip2 = models("blip2")
    fallback = LikelihoodMethod(blip2, NAMES, spec_for("blip2"), strategy="replicate")
    assert any("replicating the prompt cache" in w for w in fallback.preflight())
    assert LikelihoodMethod(blip2, NAMES, spec_for("blip2")).preflight() == []
    imagenet = load_class_names("imagenet")
    closed = LikelihoodMethod(blip2, imagenet, spec_for("blip2", setting="closed"))
    (warning,) = closed.preflight()  # 1000 names in the prompt overflow OPT's 2048 positions
    assert "context holds 2048" in warning


def test_qwen2_vl_batch_with_equal_lengths_but_different_rope_offsets(models):
    """64x64 and 32x128 pixels both give 16 image tokens, but grids of 4x4 and 2x8: the text
    after them starts at different rotary positions, so one batch needs per-image offsets."""
    model = models("qwen2_vl")
    rng = np.random.default_rng(5)
    images = [
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (32, 128, 3), dtype=np.uint8)),
    ]
    method = LikelihoodMethod(model, NAMES[:40], spec_for("qwen2_vl"))
    question = method.question_for(None)
    lengths = model.build_inputs(images, [question] * 2)["attention_mask"].sum(1).tolist()
    assert lengths[0] == lengths[1]
    predictions = method.predict(make_batch(images, [0, 1]))
    offsets = model.model.model.rope_deltas.flatten().tolist()
    assert offsets[0] != offsets[1]  # the batched prefill really had two different offsets
    for image, prediction in zip(images, predictions, strict=True):
        want = reference_log_probs(model, method, image, question, NAMES[:40])
        assert max_difference(prediction.extra["token_logprobs"], want) < TOLERANCE
