"""Classification by generation: ask the VLM, read its answer.

Open world asks the question alone; closed world appends the label set (the true label plus K-1
other names, sampled per example so every model sees the same choices). Success is the paper's
containment rule; the strict label is the longest class name found at word boundaries. With
``--format mc`` the choices are lettered options and the letter is read by MMMU's rule
(``vlmclf.methods.letters``): the prediction is that option's class, or none. An empty,
refused or truncated answer is an answer: it is stored with a ``flag`` and counts as wrong.
"""

from __future__ import annotations

import time

from vlmclf.methods.base import LoadedExample, PromptedMethod
from vlmclf.methods.letters import option_letters, parse_choice_mmmu
from vlmclf.methods.matching import contains_name, match_label
from vlmclf.methods.outcomes import flag_of_text, record_without_text
from vlmclf.methods.prompts import COT_MAX_NEW_TOKENS, DEFAULT_MAX_NEW_TOKENS
from vlmclf.models.base import VisionLanguageModel
from vlmclf.records import Prediction
from vlmclf.spec import RunSpec


class GenerateMethod(PromptedMethod):
    """Open- or closed-world generation with the paper's wordings, in the run's prompt format."""

    def __init__(self, model: VisionLanguageModel, class_names: list[str], spec: RunSpec):
        self.model = model
        self.class_names = class_names
        self.spec = spec
        default = COT_MAX_NEW_TOKENS if spec.cot else DEFAULT_MAX_NEW_TOKENS
        self.max_new_tokens = spec.max_new_tokens or default

    def preflight(self) -> list[str]:
        """Warn, with numbers, when the longest prompt leaves too little room for the answer."""
        prompt_length = getattr(self.model, "prompt_length", None)
        context = getattr(self.model, "context_length", None)
        if prompt_length is None or not context:
            return []
        if self.spec.setting == "closed":
            question = self.question_for(self.preflight_choices())
        else:
            question = self.question_for(None)
        needed = prompt_length(question) + self.max_new_tokens
        if needed <= context:
            return []
        return [
            f"the prompt takes {needed - self.max_new_tokens} tokens and the answer up to "
            f"{self.max_new_tokens}, {needed} in all, but {self.model.name} has a context of "
            f"{context} tokens: outputs will be truncated or wrong (lower --k)"
        ]

    def predict(self, batch: list[LoadedExample]) -> list[Prediction]:
        choices = [self.choices_for(e.id, e.label, e.key) for e in (i.example for i in batch)]
        questions = [self.question_for(c) for c in choices]
        start = time.perf_counter()
        answers = self.model.generate(
            [item.image for item in batch], questions, self.max_new_tokens
        )
        seconds = (time.perf_counter() - start) / max(1, len(batch))
        return [
            self._record(item, answer, offered, seconds)
            for item, answer, offered in zip(batch, answers, choices, strict=True)
        ]

    def _record(
        self, item: LoadedExample, answer: object, choices: list[int] | None, seconds: float
    ) -> Prediction:
        example = item.example
        if not isinstance(answer, str):  # an API call that gave no text for this example
            return record_without_text(example.id, example.label, answer, choices)
        truth = self.class_names[example.label]
        if self.spec.answer_format == "mc" and choices is not None:
            pred = lettered_answer(answer, choices, self.class_names)
            hit = pred is not None and self.class_names[pred] == truth
        else:
            pred = match_label(answer, self.class_names, choices)
            hit = contains_name(answer, truth)
        return Prediction(
            example_id=example.id,
            label=example.label,
            text=answer,
            choices=choices,
            pred=pred,
            hit=hit,
            seconds=seconds,
            flag=flag_of_text(answer),
        )


def lettered_answer(answer: str, choices: list[int], class_names: list[str]) -> int | None:
    """The class of the option letter the answer picks (MMMU's rule), None when it names none."""
    letters = option_letters(len(choices))
    options = {letter: class_names[index] for letter, index in zip(letters, choices, strict=True)}
    letter = parse_choice_mmmu(answer, options)
    return None if letter is None else choices[letters.index(letter)]
