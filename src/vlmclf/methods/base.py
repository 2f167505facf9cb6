"""What every method is: a function from a batch of decoded examples to Predictions.

Methods never open the store and never print; the runner persists their records and reports
progress. Anything a user should be warned about before the run starts comes from ``preflight``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from vlmclf.data.choices import PAPER_STREAM_SEED, paper_stream_choices, sample_choices
from vlmclf.data.types import Example
from vlmclf.methods.prompts import build_question
from vlmclf.records import Prediction
from vlmclf.spec import RunSpec


@dataclass(frozen=True)
class LoadedExample:
    """An example whose image decoded successfully."""

    example: Example
    image: Image.Image


class Method(Protocol):
    def preflight(self) -> list[str]:
        """Warnings worth printing before the run (e.g. prompts longer than the context)."""
        ...

    def predict(self, batch: list[LoadedExample]) -> list[Prediction]:
        """One Prediction per example, in batch order."""
        ...


PAPER_STREAM = "paper_stream"
"""``spec.options["offer"]``: labels offered from the paper's global stream (its protocol)."""


class OfferedLabels:
    """The offered labels of an example: mined (``--choices hard-*``), seeded per example from
    (seed, location-independent key) (clean), or, where the spec says ``offer: paper_stream``
    and the order is random, the paper's global stream over the whole split, which the runner
    hands over (``use_examples``) before the first batch."""

    spec: RunSpec
    class_names: list[str]
    stream: dict[str, list[int]] | None = None
    hard_choices: Callable[[str, int], list[int]] | None = None
    """``--choices hard-*``: the mined set of an example, set by the runner."""

    def uses_paper_stream(self) -> bool:
        return self.spec.options.get("offer") == PAPER_STREAM and self.spec.order == "random"

    def use_examples(self, examples: Sequence[Example], wanted: Collection[str]) -> None:
        """Draw the paper's stream for the ``wanted`` ids (``examples``: the whole split)."""
        if self.uses_paper_stream():
            self.stream = paper_stream_choices(
                examples, self.class_names, self.spec.k, wanted, PAPER_STREAM_SEED
            )

    def draw(self, example_id: str, label: int, key: str | None) -> list[int]:
        if self.hard_choices is not None:
            return self.hard_choices(example_id, label)
        if not self.uses_paper_stream():
            return sample_choices(
                label, self.class_names, self.spec.k, self.spec.order, self.spec.seed,
                key if key is not None else example_id,
            )  # fmt: skip
        if self.stream is None or example_id not in self.stream:
            raise RuntimeError(
                f"{example_id}: the paper's label stream was not drawn for this example "
                "(the runner calls use_examples with the whole split first)"
            )
        return list(self.stream[example_id])


class PromptedMethod(OfferedLabels):
    """What every prompting method shares: the offered choices and the question for an example.

    Choices come from (seed, example key) alone, or the paper's stream, so every model and
    method sees the same ones.
    """

    def choices_for(self, example_id: str, label: int, key: str | None = None) -> list[int] | None:
        """The offered label set for one example (None in the open world)."""
        if self.spec.setting == "open":
            return None
        return self.draw(example_id, label, key)

    def preflight_choices(self) -> list[int]:
        """A label set of the run's size, for measuring the longest prompt."""
        return sample_choices(0, self.class_names, self.spec.k, "fixed", 0, "preflight")

    def question_for(self, choices: list[int] | None) -> str:
        """The user text: the question, the offered names when closed-world, CoT if asked
        (unless the run's prompt template carries the CoT cue as an assistant prefix)."""
        names = None if choices is None else [self.class_names[i] for i in choices]
        cot_in_question = self.spec.cot and self.spec.prompt_template is None
        lettered = self.spec.answer_format == "mc"
        return build_question(self.spec.prompt, names, cot_in_question, lettered)


class ScoringMethod(OfferedLabels):
    """What methods that score every class share (CLIP zero-shot, supervised classifiers): the
    ``--k`` offered classes and the record of one example's scores, top-1 among those offered.

    Choices come from (seed, example key) alone, or the paper's stream, as for prompted
    methods, so every model sees the same ones.
    """

    def offered(self, example_id: str, label: int, key: str | None = None) -> list[int] | None:
        """The classes scored for one example (None: all of them)."""
        if self.spec.k is None:
            return None
        return self.draw(example_id, label, key)

    def scored_record(self, item: LoadedExample, row: list[float], seconds: float) -> Prediction:
        """The Prediction for one example's per-class scores (higher is better)."""
        example = item.example
        choices = self.offered(example.id, example.label, example.key)
        scores: list[float | None] = list(row)
        if choices is not None:
            offered = set(choices)
            scores = [s if i in offered else None for i, s in enumerate(scores)]
        pred = max((i for i, s in enumerate(scores) if s is not None), key=lambda i: scores[i])
        return Prediction(
            example_id=example.id,
            label=example.label,
            scores=scores,
            choices=choices,
            pred=pred,
            hit=self.class_names[pred] == self.class_names[example.label],
            seconds=seconds,
        )
