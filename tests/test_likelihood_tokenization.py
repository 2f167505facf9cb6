"""Class names are tokenized as the text the model reads, on a real byte-level BPE (SmolLM2's,
inside the organism): whatever whitespace ends the prompt or the answer prefix, a name's tokens
and scores equal those of ``prompt + prefix + name`` tokenized as one string and run through
one plain forward. The reference never sees our token ids: it tokenizes text, finds the name's
tokens by their character offsets and scores them with the language model's own forward."""

from __future__ import annotations

import pytest
import torch

from vlmclf.data.idx import read_fashion_mnist
from vlmclf.data.types import Example
from vlmclf.methods.base import LoadedExample
from vlmclf.methods.likelihood.method import LikelihoodMethod
from vlmclf.methods.likelihood.targets import continuation_tokens
from vlmclf.organism import load_organism
from vlmclf.organism.vlm import IMAGE_PLACEHOLDER
from vlmclf.spec import RunSpec

NAMES = ["T-shirt/top", "Trouser", "Dress", "Coat", "Sandal", "Ankle boot"]
CHECKED = ["T-shirt/top", "Dress", "Ankle boot"]  # one forward each in the reference (~1 s)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def vlm():
    return load_organism("organism:vlm")


@pytest.fixture(scope="module")
def images():
    split = read_fashion_mnist(split="test")
    return [split.examples[i].load() for i in range(2)]


@pytest.fixture(scope="module")
def visual(vlm, images):
    """The first image's projected visual tokens, computed once for every reference."""
    with torch.no_grad():
        return vlm.project(vlm.visual_tokens(images[:1]))[0]


def predict(vlm, images, **options) -> tuple[LikelihoodMethod, list]:
    spec = RunSpec(model="organism:vlm", dataset="mem", method="likelihood", options=options)
    method = LikelihoodMethod(vlm, NAMES, spec)
    batch = [
        LoadedExample(Example(f"e{i}", 0, "test", "mem", lambda: None), image)
        for i, image in enumerate(images)
    ]
    return method, method.predict(batch)


def spoken_text(prompt: str, prefix: str | None, name: str) -> tuple[str, int]:
    """The text the model reads when it answers ``name``, and where the name's text starts
    (its leading whitespace included): prompt, prefix and name joined by one space unless
    whitespace is already there."""
    context = prompt
    if prefix:
        context += ("" if context[-1].isspace() else " ") + prefix
    boundary = len(context.rstrip())
    return context + ("" if context[-1].isspace() else " ") + name, boundary


@torch.no_grad()
def reference_log_probs(vlm, visual, question: str, prefix: str | None, name: str) -> list[float]:
    """Tokenize the whole text once; the name's tokens are those ending after the context."""
    text, boundary = spoken_text(vlm.format_prompt(question), prefix, name)
    before, after = text.split(IMAGE_PLACEHOLDER)
    start = len(before) + len(IMAGE_PLACEHOLDER)
    encoded = vlm.tokenizer(after, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    first = next(i for i, (_, end) in enumerate(offsets) if start + end > boundary)
    before_ids = vlm.tokenizer(before, add_special_tokens=False)["input_ids"]
    embeds = torch.cat([vlm.embed_ids(before_ids), visual, vlm.embed_ids(ids)])[None]
    log_probs = torch.log_softmax(vlm.lm(inputs_embeds=embeds).logits[0].float(), -1)
    offset = len(before_ids) + visual.shape[0]
    return [log_probs[offset + i - 1, ids[i]].item() for i in range(first, len(ids))]


@torch.no_grad()
def reference_image_free(vlm, question: str, prefix: str | None, name: str) -> list[float]:
    text, boundary = spoken_text(vlm.format_prompt(question, with_image=False), prefix, name)
    encoded = vlm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    first = next(i for i, (_, end) in enumerate(offsets) if end > boundary)
    logits = vlm.lm(input_ids=torch.tensor([ids], device=vlm.device)).logits[0].float()
    log_probs = torch.log_softmax(logits, -1)
    return [log_probs[i - 1, ids[i]].item() for i in range(first, len(ids))]


def worst(got: list[float], want: list[float]) -> float:
    assert len(got) == len(want), (got, want)
    return max(abs(a - b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param(None, id="chat-prompt-ends-in-newline"),
        pytest.param("The photo features a ", id="trailing-space"),
        pytest.param("The photo features a", id="no-trailing-space", marks=pytest.mark.slow),
        pytest.param("The answer is:\n", id="newline", marks=pytest.mark.slow),
    ],
)
def test_names_score_as_the_text_tokenized_whole(vlm, images, visual, prefix):
    method, predictions = predict(vlm, images[:1], answer_prefix=prefix, cfg=1.5)
    question = method.question_for(None)
    for name in CHECKED:
        want = reference_log_probs(vlm, visual, question, prefix, name)
        assert worst(predictions[0].extra["token_logprobs"][name], want) < TOLERANCE, name
    for name in CHECKED:  # the guidance prior's image-free context follows the same rule
        want = reference_image_free(vlm, question, prefix, name)
        assert worst(predictions[0].extra["image_free"][name], want) < TOLERANCE, name


def test_a_trailing_space_in_the_answer_prefix_changes_nothing(vlm, images):
    _, plain = predict(vlm, images, answer_prefix="The photo features a")
    _, spaced = predict(vlm, images, answer_prefix="The photo features a ")
    for a, b in zip(plain, spaced, strict=True):
        assert max(abs(x - y) for x, y in zip(a.scores, b.scores, strict=True)) < TOLERANCE
        assert a.pred == b.pred


def test_the_fixed_prompt_rule_would_split_names_after_a_space(vlm):
    """Why the move matters: after a prompt that ends in a lone space token, the fixed-prompt
    rule can only offer the model "D", "ress" where it would naturally emit " Dress"."""
    ids = vlm.tokenizer(" Dress", add_special_tokens=False)["input_ids"]
    stuck = continuation_tokens(vlm.tokenizer, "The photo features a ", ["Dress"])["Dress"]
    assert len(ids) == 1 and len(stuck) > 1
