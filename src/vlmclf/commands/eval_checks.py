"""Checks of `vlmclf eval`'s options that need the protocol's defaults resolved, made before
anything is stored or loaded: a mistyped model, an empty question or a broken prompt template
must fail in one line without leaving a `failed` run in the store or loading a model first.
`vlmclf wikiqa` makes the model checks too (``check_model_spec``, ``check_model_answers``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from vlmclf.commands.common import fail

if TYPE_CHECKING:
    from vlmclf.run.loading import ModelOptions

PROMPTING_METHODS = ("generate", "likelihood")
TEMPLATE_FIELDS = ("image", "question")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def check_before_running(q: Any) -> None:
    """Every check below on eval's ``Question`` options (typed loosely: this module must not
    import ``commands.eval``, which calls it); each ends the command with one ``error:`` line
    and exit 2."""
    check_model_spec(q.model)
    if q.method.value not in PROMPTING_METHODS:
        return
    check_k_in_open_world(q.k, q.setting.value, q.method.value)
    check_prompt(q.prompt)
    if q.prompt_template is not None:
        check_prompt_template(q.prompt_template)


def check_model_spec(model: str) -> None:
    """A spec that names no known kind of model, without loading anything."""
    from vlmclf.models.registry import check_spec
    from vlmclf.spec import is_api_model

    if is_api_model(model):
        if not model.partition(":")[2].strip():
            fail(f"--model {model!r} names no model after the prefix (e.g. openai:gpt-4o)")
        return
    try:
        check_spec(model)
    except ValueError as err:
        fail(f"--model: {err}")


def check_model_answers(model: str, options: ModelOptions) -> None:
    """A missing API key or an API server that does not answer (one probe request with a short
    timeout): one line and exit 2 in seconds, before the store is opened (nothing stored).
    A local model passes (its spec was checked by ``check_model_spec``)."""
    from vlmclf.models.api import ApiError
    from vlmclf.run.loading import check_model

    try:
        check_model(model, options)
    except (ValueError, ApiError) as err:
        fail(str(err))


def check_k_in_open_world(k: int | None, setting: str, method: str) -> None:
    """In the open world the model is never offered a label set, so --k would only change
    the run id (a second run of the same predictions)."""
    if k is not None and setting == "open":
        fail(f"--k applies to --setting closed (the offered label set); --method {method} "
             "in the open world offers no choices, so leave --k out or add --setting closed")


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        fail("--prompt is empty: the model would be sent no question")


def check_prompt_template(template: str) -> None:
    """The template must place the question, and may place the image; any other ``{...}`` or
    a stray brace is a mistake that would only show after the model is loaded."""
    fields = _PLACEHOLDER.findall(template)
    unknown = sorted({f for f in fields if f not in TEMPLATE_FIELDS})
    if unknown:
        named = ", ".join("{" + f + "}" for f in unknown)
        fail(f"--prompt-template has unknown placeholder(s) {named}; only {{image}} and "
             "{question} are filled in")  # fmt: skip
    rest = _PLACEHOLDER.sub("", template)
    if "{" in rest or "}" in rest:
        fail(f"--prompt-template {template!r} has an unmatched brace; write the placeholders "
             "{image} and {question}")  # fmt: skip
    if "question" not in fields:
        fail(f"--prompt-template {template!r} has no {{question}}: the model would not see the "
             "question")  # fmt: skip
