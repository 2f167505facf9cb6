"""Answering a batch of checked requests with a local vlmclf model.

Generation uses ``GreedyDecoder`` where the model has the organism's prompt interface (a shared
prompt prefix computed once, rows that leave the batch when done, tokens streamed as decoded,
token budgets mixed in one batch), and the model's own batched
``generate(images, questions, max_new_tokens)`` otherwise; log-probabilities come from the
likelihood engine's prefill (``make_target``), the same numbers
``--method likelihood`` uses. A batch whose every client has gone is stopped between two forward
passes by a pre-forward hook on the language model, so an abandoned long answer does not hold
the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any

import torch

from vlmclf.serve.batching import CLIENT_GONE, Job
from vlmclf.serve.greedy import Decoded, GreedyDecoder, GreedyRow
from vlmclf.serve.protocol import Answer, RequestError
from vlmclf.serve.text_stream import TextStream

logger = logging.getLogger("vlmclf.serve")


class GenerationCancelled(Exception):
    """Raised inside the model's forward when no client of the running batch is left."""


class ModelEngine:
    """Runs groups of compatible jobs on ``model`` (called from the batcher's one thread)."""

    def __init__(self, model: Any):
        self.model = model
        self._active: list[Job] = []
        self._target: Any = None
        self._prompt_lengths: dict[tuple[str, tuple[int, int]], int] = {}
        self._hooked = _install_cancel_hook(model, self._all_clients_gone)
        self.greedy = GreedyDecoder(model) if GreedyDecoder.supports(model) else None
        """The server's own decoder; None: the model's generate (other models, or to compare)."""

    def group_key(self, job: Job) -> Hashable:
        """Jobs with equal keys share a batch; the greedy decoder mixes token budgets."""
        if self.greedy is not None and not job.request.wants_logprobs:
            return ("generate",)
        return job.group_key()

    @property
    def can_cancel(self) -> bool:
        """Whether a running batch can be stopped (the model exposes a torch module)."""
        return self._hooked

    def run_group(self, jobs: list[Job]) -> None:
        """Answer every job; one bad request in a batch is found by answering them one by one."""
        self._active = jobs
        try:
            answers = self._score(jobs) if jobs[0].request.wants_logprobs else self._generate(jobs)
        except GenerationCancelled:
            for job in jobs:
                job.finish(error=RequestError(CLIENT_GONE, "the client went away", "client_gone"))
            return
        except Exception as err:  # noqa: BLE001 - isolate the request that caused it
            if len(jobs) > 1:
                for job in jobs:  # a streamed answer cannot be taken back and sent again
                    if job.emitted:
                        job.finish(error=_as_request_error(err))
                    else:
                        self.run_group([job])
                return
            jobs[0].finish(error=_as_request_error(err))
            return
        finally:
            self._active = []
        for job, answer in zip(jobs, answers, strict=True):
            if isinstance(answer, RequestError):
                job.finish(error=answer)
            else:
                job.finish(answer)

    def _all_clients_gone(self) -> bool:
        active = self._active
        return bool(active) and all(job.cancelled.is_set() for job in active)

    # ----- generation --------------------------------------------------------------------

    def _generate(self, jobs: list[Job]) -> list[Answer | RequestError]:
        if self.greedy is None:
            return list(self._generate_whole(jobs))
        streams = [TextStream(self.model.tokenizer) if job.request.stream else None for job in jobs]
        rows = [_greedy_row(job, stream) for job, stream in zip(jobs, streams, strict=True)]
        decoded = self.greedy.decode(rows)
        return [
            self._greedy_answer(job, result, stream)
            for job, result, stream in zip(jobs, decoded, streams, strict=True)
        ]

    def _greedy_answer(
        self, job: Job, result: Decoded, stream: TextStream | None
    ) -> Answer | RequestError:
        if result.cancelled:
            return RequestError(CLIENT_GONE, "the client went away", "client_gone")
        text = self.model.tokenizer.decode(result.token_ids, skip_special_tokens=True).strip()
        if stream is not None:
            job.emit(stream.finish(text))
        finish = "stop" if result.stopped else "length"
        return Answer(text, self._prompt_tokens(job), len(result.token_ids), finish)

    def _generate_whole(self, jobs: list[Job]) -> list[Answer]:
        max_tokens = jobs[0].request.max_tokens
        texts = self.model.generate(
            [job.image for job in jobs], [job.request.question for job in jobs], max_tokens
        )
        answers = []
        for job, text in zip(jobs, texts, strict=True):
            # re-tokenizing the decoded text can exceed the budget by a token or two
            completion = min(self._count_tokens(text), max_tokens)
            finish = "length" if completion >= max_tokens else "stop"
            answers.append(Answer(text, self._prompt_tokens(job), completion, finish))
        return answers

    # ----- log-probabilities -------------------------------------------------------------

    def _score(self, jobs: list[Job]) -> list[Answer]:
        """The first answer token's log-probabilities, one prefill per group of equal questions."""
        target = self._scoring_target()
        rows_by_question: dict[str, list[int]] = {}
        for index, job in enumerate(jobs):
            rows_by_question.setdefault(job.request.question, []).append(index)
        answers: list[Answer | None] = [None] * len(jobs)
        for question, rows in rows_by_question.items():
            images = [jobs[i].image for i in rows]
            for sub_rows, prefix in target.image_prefixes(images, question, ()):
                for sub_row, log_probs in zip(sub_rows, prefix.first_log_probs, strict=True):
                    job_index = rows[sub_row]
                    answers[job_index] = self._first_token_answer(jobs[job_index], log_probs)
        return [answer for answer in answers if answer is not None]

    def _scoring_target(self) -> Any:
        if self._target is None:
            from vlmclf.methods.likelihood.targets import make_target

            try:
                self._target = make_target(self.model)
            except ValueError as err:
                raise RequestError(
                    400, f"this model cannot return logprobs: {err}", param="logprobs"
                ) from err
        return self._target

    def _first_token_answer(self, job: Job, log_probs: torch.Tensor) -> Answer:
        tokenizer = self.model.tokenizer
        k = max(1, job.request.top_logprobs or 0)
        values, ids = torch.topk(log_probs.float(), min(k, log_probs.shape[-1]))
        tokens = [tokenizer.decode([int(i)]) for i in ids]
        top = [(token, float(v)) for token, v in zip(tokens, values, strict=True)]
        first_id = int(ids[0])
        text = tokenizer.decode([first_id], skip_special_tokens=True).strip()
        finish = "stop" if first_id == getattr(tokenizer, "eos_token_id", None) else "length"
        return Answer(
            text, self._prompt_tokens(job), 1, finish, top[0], top[: job.request.top_logprobs]
        )

    # ----- token counts ------------------------------------------------------------------

    def _prompt_tokens(self, job: Job) -> int:
        key = (job.request.question, job.image.size)
        if key not in self._prompt_lengths:
            self._prompt_lengths[key] = _measure(
                lambda: self.model.prompt_length(job.request.question, job.image.size),
                lambda: self.model.prompt_length(job.request.question),
            )
        return self._prompt_lengths[key]

    def _count_tokens(self, text: str) -> int:
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            return 0
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _greedy_row(job: Job, stream: TextStream | None) -> GreedyRow:
    def on_token(token: int) -> None:
        if stream is not None:
            job.emit(stream.push(token))

    return GreedyRow(
        job.image, job.request.question, job.request.max_tokens, on_token, job.cancelled.is_set
    )


def _measure(*ways: Callable[[], int]) -> int:
    """The first way that works (models differ in prompt_length's signature); 0 if none."""
    for way in ways:
        try:
            return int(way())
        except TypeError:
            continue
        except Exception:  # noqa: BLE001 - a count is informative, never worth failing over
            return 0
    return 0


def _as_request_error(err: Exception) -> RequestError:
    if isinstance(err, RequestError):
        return err
    if isinstance(err, ValueError):  # the model refused this input (e.g. a prompt too long)
        return RequestError(400, f"the model refused the request: {err}")
    logger.error("the model failed: %s: %s", type(err).__name__, err)
    return RequestError(500, f"the model failed: {type(err).__name__}: {err}", "model_failed")


def _install_cancel_hook(model: Any, should_stop: Callable[[], bool]) -> bool:
    """A pre-forward hook on the model's torch module that raises when ``should_stop()``."""
    module = next(
        (
            m
            for m in (getattr(model, "lm", None), getattr(model, "model", None))
            if isinstance(m, torch.nn.Module)
        ),
        None,
    )
    if module is None:
        return False

    def stop_if_abandoned(_module: torch.nn.Module, _args: Any) -> None:
        if should_stop():
            raise GenerationCancelled

    module.register_forward_pre_hook(stop_if_abandoned)
    return True
