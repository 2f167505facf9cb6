"""RunSpec: what the user asked for, and nothing that changes only speed or how much is done.

The spec is hashed with default-valued fields left out, so adding a new option with a default
later keeps the hash. A run's id is not this hash alone: ``vlmclf.run.identity`` adds the
content the spec resolved to (prompts, classes, templates, examples, weights, server) and hashes
it all; ``RunSpec.run_id`` is the id of runs stored before content identities (schema 2). Things
that change only speed or how much is done (batch size, device, --limit, --store) are in neither.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict

Method = Literal["clip", "generate", "likelihood", "classifier"]
Setting = Literal["open", "closed"]
Order = Literal["fixed", "random"]
Choices = Literal["random", "hard-text", "hard-image"]
API_PROVIDERS = ("openai", "anthropic", "gemini")
"""Model spec prefixes of models behind an API: no local weights, so no dtype or device."""


def is_api_model(model: str) -> bool:
    return model.split(":", 1)[0] in API_PROVIDERS


class RunSpec(BaseModel):
    """The identity of a run. Same spec, same id, same cached predictions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    dataset: str
    split: str | None = None  # None: the layout's default split (val for ImageNet, test elsewhere)
    method: Method
    setting: Setting = "open"
    prompt: str = "base"
    k: int | None = None
    order: Order = "fixed"
    seed: int = 0
    cot: bool = False
    templates: str = "paper"
    max_new_tokens: int | None = None
    dtype: str = "float32"
    match: str = "contain"
    protocol: str = "clean"  # the table the settings were resolved from (vlmclf.paper.protocols)
    prompt_template: str | None = None  # None: the family's own format; else {image}, {question}
    options: dict[str, str | int | float | bool | None] = {}
    choices: Choices = "random"  # how the K offered classes are drawn (vlmclf.run.hard_choices)
    choice_model: str | None = None  # the CLIP that mines hard choices
    answer_format: Literal["names", "mc"] = "names"  # mc: lettered options, the letter is read

    def canonical_json(self) -> str:
        """The spec as sorted JSON, defaults left out: the input of the run id."""
        return json.dumps(self.model_dump(exclude_defaults=True), sort_keys=True)

    @property
    def run_id(self) -> str:
        """The hash of the spec alone (the run id of stores before schema 3)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]
