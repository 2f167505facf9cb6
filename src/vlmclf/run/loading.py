"""One entry point that turns a model spec into a model, whatever its kind.

Local models (hf:, random:, open_clip:, organism:) go through ``vlmclf.models.load_model``; API
models (openai:, anthropic:, gemini:) take their own options (base URL, concurrency, budgets).

``--device auto`` and ``--dtype auto`` are resolved here, before anything is loaded: the dtype
is part of a run's identity, so it must be a concrete value before the RunSpec is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vlmclf.spec import is_api_model

AUTO = "auto"
DTYPES = ("float32", "float16", "bfloat16")


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


def load_any_model(spec: str, options: ModelOptions) -> object:
    """Load the model a spec names, with the options that apply to its kind."""
    if is_api_model(spec):
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


def check_model(spec: str, options: ModelOptions) -> None:
    """Refuse, before any work, an API model that would only fail once the run has started:
    its key is not set or its server does not answer (the API's error, one line). A local
    spec's prefix is checked with the other arguments (``models.registry.check_spec``)."""
    if is_api_model(spec):
        from vlmclf.models.api.loader import check_api_model

        check_api_model(spec, options.base_url)


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


# ----------------------------------------------------------------- device and dtype

def resolve_device(requested: str) -> str:
    """A concrete device for ``--device``: ``auto`` is CUDA, then MPS, else CPU. Under torchrun
    (``LOCAL_RANK`` set) ``auto`` and ``cuda`` mean this rank's GPU, ``cuda:LOCAL_RANK``.
    Raises ValueError (one line) for a device this machine lacks or a malformed name."""
    import torch

    name = requested.strip().lower()
    if name == AUTO:
        if torch.cuda.is_available():
            return _rank_cuda_device()
        return "mps" if _mps_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "mps":
        if not _mps_available():
            raise ValueError("--device mps: MPS (Apple GPU) is not available on this machine")
        return "mps"
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: {_no_cuda_reason()}")
        return _rank_cuda_device() if name == "cuda" else _checked_cuda_index(name, int(name[5:]))
    raise ValueError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {requested!r}")


def resolve_dtype(requested: str, model: str, device: str, *, training: bool = False) -> str:
    """A concrete dtype for ``--dtype``: ``auto`` is float32 on CPU (and for API models, where
    it changes nothing) and the checkpoint's own dtype on an accelerator. ``training``: a
    float16 checkpoint trains in bfloat16 (float16 without loss scaling underflows).
    Raises ValueError (one line) for an unknown dtype."""
    name = parse_dtype(requested)
    if name != AUTO:
        return name
    if device == "cpu" or is_api_model(model):
        return "float32"
    found = checkpoint_dtype(model)
    return "bfloat16" if training and found == "float16" else found


def parse_dtype(requested: str) -> str:
    """``auto`` or one of DTYPES, as typed; ValueError (one line) for anything else."""
    name = requested.strip().lower()
    if name != AUTO and name not in DTYPES:
        raise ValueError(f"--dtype must be auto, {', '.join(DTYPES[:-1])} or {DTYPES[-1]}, "
                         f"got {requested!r}")  # fmt: skip
    return name


def checkpoint_dtype(model: str) -> str:
    """The dtype a model's weights are stored in, read without loading them: an ``hf:``
    checkpoint's config (its folder or the Hugging Face cache). The others are float32:
    ``random:`` models are initialised in torch's default dtype, the organism's weights ship
    in float32 (its language model dequantised from GGUF), ``open_clip:`` loads checkpoints at
    its own default precision, fp32, and API models have no local weights."""
    prefix, _, name = model.partition(":")
    if prefix != "hf":
        return "float32"
    config = _hf_config_dict(model, name)
    found = _config_dtype(config)
    if found is None:
        return "float32"  # transformers' own default for a config that names no dtype
    if found not in DTYPES:
        raise ValueError(
            f"--dtype auto: {model} is stored in {found}, which vlmclf does not run; "
            f"pass --dtype {' or '.join(DTYPES)}"
        )
    return found


def _hf_config_dict(model: str, name: str) -> dict[str, Any]:
    """The checkpoint's config.json as a dict (no model class, no remote code)."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(name)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"--dtype auto: cannot read the config of {model} ({first_line}); pass --dtype"
        ) from None
    return config


def _config_dtype(config: dict[str, Any]) -> str | None:
    """``dtype`` (transformers 5) or ``torch_dtype`` (earlier), at the top level or, for
    composite configs that name it only there, in the language model's sub-config."""
    for section in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        for key in ("dtype", "torch_dtype"):
            value = section.get(key) if isinstance(section, dict) else None
            if value:
                return str(value).removeprefix("torch.")
    return None


def local_rank() -> int | None:
    """torchrun's ``LOCAL_RANK`` (this process's GPU on its node), None outside torchrun."""
    value = os.environ.get("LOCAL_RANK")
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise ValueError(f"LOCAL_RANK must be a whole number >= 0, got {value!r}")
    return int(value)


def _rank_cuda_device() -> str:
    rank = local_rank()
    return "cuda" if rank is None else _checked_cuda_index(f"cuda (LOCAL_RANK={rank})", rank)


def _checked_cuda_index(asked: str, index: int) -> str:
    import torch

    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"--device {asked}: only {count} CUDA device(s) are visible")
    return f"cuda:{index}"


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _no_cuda_reason() -> str:
    import torch

    if torch.version.cuda is None:
        return f"CUDA is not available: torch {torch.__version__} is built without CUDA"
    return "CUDA is not available: no GPU is visible (check CUDA_VISIBLE_DEVICES and the driver)"
