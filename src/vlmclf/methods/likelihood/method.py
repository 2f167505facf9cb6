"""Classification by class-name likelihood: the paper's "probabilistic inference".

Each class name is scored by the log-probability the VLM gives it after the image and the
prompt; the best-scoring name wins. Per batch of images the prompt is prefilled once and every
distinct class-name token prefix is run once (``scoring.py``). Options (``spec.options``):

* ``agg``: ``"sum"`` (default) or ``"mean"`` of the name's token log-probs (the paper's two).
* ``cfg``: classifier-free guidance weight ``t``: ``t * logp(c | image, prompt) +
  (1 - t) * logp(c | prompt)``; the image-free term is a real text-only pass, run once per
  (prompt, class list) for the whole dataset.
* ``calibration``: ``"none"`` (default) or ``"dataset_mean"``: the original code's variant, whose
  prior is the class's mean log-prob over the dataset's images instead of a text-only pass; it
  needs every prediction, so ``finalize_predictions`` applies it once the run is complete.
* ``answer_prefix``: text the answer starts with (the paper's code used "The photo features a"
  for LLaVA); names are scored after it.

Predictions store every name's per-token log-probs, so any aggregate, guidance weight or top-k
can be recomputed without the model (``scores.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from vlmclf.methods.base import LoadedExample, PromptedMethod
from vlmclf.methods.likelihood.scores import (
    Aggregate,
    DatasetMeanPrior,
    best_index,
    class_scores,
    dataset_mean_prior,
    guided,
    rescore,
)
from vlmclf.methods.likelihood.scoring import Strategy
from vlmclf.methods.likelihood.targets import (
    ScoringContext,
    make_target,
    name_continuations,
    scoring_context,
)
from vlmclf.methods.likelihood.trie import TokenSequence
from vlmclf.records import Prediction
from vlmclf.spec import RunSpec

OPTION_KEYS = ("agg", "cfg", "calibration", "answer_prefix", "cfg_sweep")
CALIBRATIONS = ("none", "dataset_mean")


@dataclass(frozen=True)
class LikelihoodOptions:
    agg: Aggregate = "sum"
    cfg: float | None = None
    calibration: str = "none"
    answer_prefix: str | None = None

    @classmethod
    def from_spec(cls, spec: RunSpec) -> LikelihoodOptions:
        options = dict(spec.options)
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(
                f"likelihood: unknown option(s) {unknown}; accepted: {', '.join(OPTION_KEYS)}"
            )
        agg = options.get("agg") or "sum"
        if agg not in ("sum", "mean"):
            raise ValueError(f"likelihood: --agg must be 'sum' or 'mean', got {agg!r}")
        cfg = options.get("cfg")
        if cfg is not None and (isinstance(cfg, bool) or not isinstance(cfg, int | float)):
            raise ValueError(f"likelihood: --cfg must be a number, got {cfg!r}")
        calibration = options.get("calibration") or "none"
        if calibration not in CALIBRATIONS:
            raise ValueError(
                f"likelihood: calibration must be one of {CALIBRATIONS}, got {calibration!r}"
            )
        if calibration == "dataset_mean" and cfg is None:
            raise ValueError(
                "likelihood: dataset_mean calibration needs --cfg T (the weight of the image term)"
            )
        prefix = options.get("answer_prefix")
        if prefix is not None and not isinstance(prefix, str):
            raise ValueError(f"likelihood: answer_prefix must be text, got {prefix!r}")
        return cls(agg, None if cfg is None else float(cfg), calibration, prefix or None)

    @property
    def needs_image_free(self) -> bool:
        return self.cfg is not None and self.calibration == "none"


class LikelihoodMethod(PromptedMethod):
    """Score every (offered) class name after the image and the prompt; pick the best."""

    def __init__(
        self,
        model: Any,
        class_names: list[str],
        spec: RunSpec,
        *,
        strategy: Strategy = "auto",
        max_pass_tokens: int | None = None,
    ):
        self.model = model
        self.class_names = class_names
        self.spec = spec
        self.options = LikelihoodOptions.from_spec(spec)
        self.target = make_target(model, strategy, max_pass_tokens)
        self.scorer = self.target.scorer
        self.unique_names = list(dict.fromkeys(class_names))
        self._prompts: dict[str, ScoringContext] = {}
        self._continuations: dict[tuple[str, tuple[str, ...]], dict[str, TokenSequence]] = {}
        self._image_free: dict[tuple[str, tuple[str, ...]], dict[str, list[float]]] = {}
        self._images_per_pass: dict[tuple[str, tuple[str, ...]], int] = {}

    # ------------------------------------------------------------------ planning

    def names_for(self, choices: list[int] | None) -> tuple[str, ...]:
        if choices is None:
            return tuple(self.unique_names)
        return tuple(dict.fromkeys(self.class_names[i] for i in choices))

    def prompt_for(self, question: str) -> ScoringContext:
        """The context class names follow for a question: its prompt and the answer prefix,
        trailing whitespace moved into the names (lm-evaluation-harness's rule)."""
        if question not in self._prompts:
            if len(self._prompts) > 64:  # closed world: one question per example, keep few
                self._prompts.clear()
            self._prompts[question] = scoring_context(
                self.target.tokenizer,
                self.target.context_text(question),
                self.options.answer_prefix,
            )
        return self._prompts[question]

    def continuations_for(self, question: str, names: tuple[str, ...]) -> dict[str, TokenSequence]:
        key = (question, names)
        if key not in self._continuations:
            context = self.prompt_for(question)
            if len(self._continuations) > 64:  # closed world: one entry per example, keep few
                self._continuations.clear()
            self._continuations[key] = name_continuations(self.target.tokenizer, context, names)
        return self._continuations[key]

    # ------------------------------------------------------------------ method protocol

    def preflight(self) -> list[str]:
        warnings = []
        if self.scorer.strategy == "replicate":
            warnings.append(
                f"{getattr(self.model, 'name', 'model')}: class names are scored by replicating "
                "the prompt cache (its decoder takes no tree mask); exact but slower"
            )
        warnings.extend(self._context_warnings())
        return warnings

    def _context_warnings(self) -> list[str]:
        prompt_length = getattr(self.model, "prompt_length", None)
        context = getattr(self.model, "context_length", 0)
        if not callable(prompt_length) or not context:
            return []
        choices = None if self.spec.setting == "open" else self.preflight_choices()
        question = self.question_for(choices)
        scoring = self.prompt_for(question)
        longest = max(
            len(s) for s in self.continuations_for(question, self.names_for(choices)).values()
        )
        needed = prompt_length(question) - scoring.trim + len(scoring.answer) + longest
        if needed <= context:
            return []
        return [
            f"prompt and longest class name take {needed} tokens but the context holds {context}"
        ]

    def predict(self, batch: list[LoadedExample]) -> list[Prediction]:
        start = time.perf_counter()
        choices = [self.choices_for(e.id, e.label, e.key) for e in (i.example for i in batch)]
        questions = [self.question_for(c) for c in choices]
        groups: dict[str, list[int]] = {}
        for i, question in enumerate(questions):
            groups.setdefault(question, []).append(i)
        token_logprobs: list[dict[str, list[float]]] = [{} for _ in batch]
        priors: list[dict[str, list[float]] | None] = [None] * len(batch)
        for question, rows in groups.items():
            names = self.names_for(choices[rows[0]])
            scored = self._score_images([batch[i].image for i in rows], question, names)
            prior = self._image_free_for(question, names) if self.options.needs_image_free else None
            for row, values in zip(rows, scored, strict=True):
                token_logprobs[row], priors[row] = values, prior
        seconds = (time.perf_counter() - start) / max(1, len(batch))
        return [
            self._record(item, offered, logprobs, prior, seconds)
            for item, offered, logprobs, prior in zip(
                batch, choices, token_logprobs, priors, strict=True
            )
        ]

    # ------------------------------------------------------------------ scoring

    def _score_images(
        self, images: list[Any], question: str, names: tuple[str, ...]
    ) -> list[dict[str, list[float]]]:
        continuations = self.continuations_for(question, names)
        ordered = list(continuations)
        sequences = [continuations[name] for name in ordered]
        context = self.prompt_for(question)
        per_pass = self._per_pass(question, names, sequences)
        out: list[dict[str, list[float]] | None] = [None] * len(images)
        for start in range(0, len(images), per_pass):
            chunk = images[start : start + per_pass]
            prefixes = self.target.image_prefixes(chunk, question, context.answer, context.trim)
            for rows, prefix in prefixes:
                values = self.scorer.score(prefix, sequences)
                for row, per_name in zip(rows, values, strict=True):
                    out[start + row] = dict(zip(ordered, per_name, strict=True))
        return out  # type: ignore[return-value]

    def _per_pass(
        self, question: str, names: tuple[str, ...], sequences: Sequence[TokenSequence]
    ) -> int:
        key = (question, names) if self.spec.setting == "open" else ("", ())
        if key not in self._images_per_pass:
            self._images_per_pass[key] = self.scorer.images_per_pass(sequences)
        return self._images_per_pass[key]

    def _image_free_for(self, question: str, names: tuple[str, ...]) -> dict[str, list[float]]:
        """logp(name | prompt without the image): one text-only pass per (prompt, class list)."""
        key = (question, names)
        if key not in self._image_free:
            if len(self._image_free) > 64:
                self._image_free.clear()
            continuations = self.continuations_for(question, names)
            ordered = list(continuations)
            context = self.prompt_for(question)
            prefix = self.target.text_prefix(question, context.answer, context.trim)
            values = self.scorer.score(prefix, [continuations[n] for n in ordered])[0]
            self._image_free[key] = dict(zip(ordered, values, strict=True))
        return self._image_free[key]

    def _record(
        self,
        item: LoadedExample,
        choices: list[int] | None,
        token_logprobs: dict[str, list[float]],
        prior: dict[str, list[float]] | None,
        seconds: float,
    ) -> Prediction:
        example, options = item.example, self.options
        t = options.cfg if options.needs_image_free else None
        named = {
            name: guided(v, prior[name] if prior else None, options.agg, t)
            for name, v in token_logprobs.items()
        }
        scores = class_scores(self.class_names, named)
        pred = best_index(scores)
        extra: dict[str, Any] = {"token_logprobs": token_logprobs, "agg": options.agg, "cfg": t}
        if prior is not None:
            extra["image_free"] = prior
        if options.calibration == "dataset_mean":
            extra["pending_calibration"] = {"prior": "dataset_mean", "cfg": options.cfg}
        return Prediction(
            example_id=example.id, label=example.label, scores=scores, choices=choices, pred=pred,
            hit=pred is not None and self.class_names[pred] == self.class_names[example.label],
            seconds=seconds, extra=extra,
        )  # fmt: skip


def finalize_predictions(
    predictions: Sequence[Prediction], class_names: Sequence[str], spec: RunSpec
) -> list[Prediction]:
    """What a finished run's predictions become once the whole dataset is in.

    Identity unless the run asked for ``calibration=dataset_mean``, whose prior (each class's
    mean token log-probs over all the run's images) exists only then.
    """
    if spec.method != "likelihood":
        return list(predictions)
    options = LikelihoodOptions.from_spec(spec)
    if options.calibration != "dataset_mean":
        return list(predictions)
    return _calibrated(predictions, class_names, options, dataset_mean_prior(predictions))


def _calibrated(
    predictions: Sequence[Prediction],
    class_names: Sequence[str],
    options: LikelihoodOptions,
    prior: dict[str, list[float]],
) -> list[Prediction]:
    calibrated = rescore(predictions, class_names, options.agg, options.cfg, prior="dataset_mean",
                         shared_prior=prior)  # fmt: skip
    for p in calibrated:
        p.extra.pop("pending_calibration", None)
    return calibrated


def needs_finalizing(spec: RunSpec) -> bool:
    """Does the run's summary need the whole run first (dataset-mean calibration)?"""
    return (
        spec.method == "likelihood"
        and LikelihoodOptions.from_spec(spec).calibration == "dataset_mean"
    )


def finalize_prediction_chunks(
    read_chunks: Callable[[], Iterable[list[Prediction]]],
    class_names: Sequence[str],
    spec: RunSpec,
) -> Iterator[list[Prediction]]:
    """``finalize_predictions`` for a run read in chunks: one pass for the dataset-mean prior,
    a second to rescore each chunk with it (``read_chunks`` gives a fresh pass each call)."""
    if not needs_finalizing(spec):
        yield from read_chunks()
        return
    options = LikelihoodOptions.from_spec(spec)
    prior = DatasetMeanPrior()
    for chunk in read_chunks():
        prior.add(chunk)
    shared = prior.result()
    for chunk in read_chunks():
        yield _calibrated(chunk, class_names, options, shared)
