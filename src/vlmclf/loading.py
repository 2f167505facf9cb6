"""One entry point that turns a model spec into a model, whatever its kind.

Local models (hf:, random:, open_clip:, organism:) go through ``vlmclf.models.load_model``; API
models (openai:, anthropic:, gemini:) take their own options (base URL, concurrency, budgets).
"""

from __future__ import annotations

from dataclasses import dataclass

API_PREFIXES = ("openai", "anthropic", "gemini")


@dataclass(frozen=True)
class ModelOptions:
    """How to load and run a model; none of it changes results, so none of it is in the RunSpec."""

    device: str = "cpu"
    dtype: str = "float32"
    device_map: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    base_url: str | None = None
    concurrency: int = 4
    max_requests: int | None = None
    max_cost_usd: float | None = None
    image_max_side: int | None = None
    api_timeout_s: float = 60.0
    price_file: str | None = None  # JSON prices for --max-cost and cost estimates


def is_api_spec(spec: str) -> bool:
    return spec.split(":", 1)[0] in API_PREFIXES


def load_any_model(spec: str, options: ModelOptions) -> object:
    """Load the model a spec names, with the options that apply to its kind."""
    if is_api_spec(spec):
        from vlmclf.models.api import load_api_model

        return load_api_model(
            spec,
            base_url=options.base_url,
            concurrency=options.concurrency,
            max_requests=options.max_requests,
            max_cost_usd=options.max_cost_usd,
            image_max_side=options.image_max_side,
            timeout_s=options.api_timeout_s,
            price_file=options.price_file,
        )
    from vlmclf.models import load_model

    return load_model(
        spec,
        device=options.device,
        dtype=options.dtype,
        device_map=options.device_map,
        trust_remote_code=options.trust_remote_code,
        seed=options.seed,
    )


class LastModelLoader:
    """Keeps the last model loaded, so consecutive runs of one model (a sweep's cells, the demo's
    methods) load it once, while never holding two models at a time."""

    def __init__(self) -> None:
        self.key: tuple[str, ModelOptions] | None = None
        self.model: object | None = None

    def __call__(self, spec: str, options: ModelOptions) -> object:
        if self.key != (spec, options):
            self.model = None  # free the previous model before loading the next
            self.model = load_any_model(spec, options)
            self.key = (spec, options)
        return self.model
