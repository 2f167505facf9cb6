"""Everything that depends on the transformers / torch version, in one place.

Supported: transformers 5.17 to 5.23, torch 2.4 and later. The GPU machines run an older
transformers than development machines, so only APIs present in 5.17 are used, and the few
return-type changes between releases are absorbed here.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``, with a clear error for anything else."""
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(TORCH_DTYPES)}, got {name!r}") from None


def torch_device(name: str) -> torch.device:
    """Validate a device string: cpu, cuda, cuda:N or mps."""
    if name == "cpu" or name == "mps" or name == "cuda":
        return torch.device(name)
    if name.startswith("cuda:") and name[5:].isdigit():
        return torch.device(name)
    raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got {name!r}")


def from_pretrained_kwargs(
    dtype: str, device_map: str | None, trust_remote_code: bool
) -> dict[str, Any]:
    """Keyword arguments for ``*.from_pretrained`` (transformers 5 names ``dtype``)."""
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs


def as_loaded_in(model: nn.Module, dtype: str) -> nn.Module:
    """``model`` as ``type(model).from_pretrained(dir, dtype=...)`` gives it from its saved
    weights: parameters in ``dtype``, buffers as transformers keeps them (the rotary
    ``inv_freq`` stays float32, which ``model.to(dtype)`` would round), ``_keep_in_fp32``
    modules kept. A model already in ``dtype`` (loaded that way) is returned as it is."""
    import tempfile

    wanted = torch_dtype(dtype)
    loaded_so = getattr(getattr(model, "config", None), "dtype", None) == wanted  # from_pretrained
    if loaded_so or next(model.parameters()).dtype == wanted:
        return model
    with tempfile.TemporaryDirectory(prefix="vlmclf-dtype-") as folder:
        model.save_pretrained(folder)
        loaded = type(model).from_pretrained(folder, dtype=wanted)
    return loaded.eval()


def features_tensor(output: Any) -> torch.Tensor:
    """``get_image_features`` / ``get_text_features`` return a tensor in some releases and an
    output object (embeddings in ``pooler_output``) in others."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"cannot find the embeddings in {type(output).__name__}")


def model_device(model: nn.Module) -> torch.device:
    """Where inputs must go: the device of the input embeddings (first shard under device_map)."""
    try:
        return model.get_input_embeddings().weight.device
    except NotImplementedError:  # dual encoders (CLIPModel) have two embedding tables
        return next(model.parameters()).device


class _Captured(Exception):
    """Raised from a forward pre-hook to stop a forward once its inputs are recorded."""


@contextlib.contextmanager
def capture_call_kwargs(module: nn.Module, into: dict[str, Any]) -> Iterator[None]:
    """Record the keyword arguments ``module`` is called with and skip running it.

    Lets a caller reuse a model's own (version-specific) code for merging image features into
    the text embeddings without running the language model on them.
    """

    def hook(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if args:
            into["args"] = args
        into.update(kwargs)
        raise _Captured

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    except _Captured:
        pass
    finally:
        handle.remove()


def sentence_transformer_class() -> type:
    """``sentence_transformers.SentenceTransformer``, imported with stdout sent to stderr:
    importing it loads transformers' integrations, which print a notice on stdout when
    ``WANDB_MODE=offline`` (as for ``--log wandb`` offline), and ``--json`` output must stay
    one JSON line."""
    with contextlib.redirect_stdout(sys.stderr):
        from sentence_transformers import SentenceTransformer
    return SentenceTransformer


def load_image_processor(ident: str, trust_remote_code: bool = False) -> Any:
    """``AutoImageProcessor``, falling back to the PIL-backed twin of the saved class when the
    saved one needs torchvision and it is missing (transformers 5.17 does not fall back)."""
    import transformers
    from transformers import AutoImageProcessor
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        return AutoImageProcessor.from_pretrained(ident, trust_remote_code=trust_remote_code)
    except ImportError:
        config, _ = ImageProcessingMixin.get_image_processor_dict(ident)
        saved = str(config.get("image_processor_type", "")).removesuffix("Fast")
        pil_class = getattr(transformers, f"{saved}Pil", None)
        if pil_class is None:
            raise
        return pil_class.from_pretrained(ident)


_PIXTRAL = "transformers.models.pixtral"


@functools.cache
def processor_class(name: str) -> type:
    """The transformers processor class ``name``, importable without torchvision where only an
    import stands in the way: ``PixtralProcessor``'s module imports the torchvision image
    processor for one size helper (used to count tokens, not to process), which the PIL twin
    defines as well. Elsewhere transformers gives a placeholder that fails when called."""
    import importlib
    import sys
    import types

    import transformers

    found = getattr(transformers, name)
    if name != "PixtralProcessor" or not isinstance(found, transformers.utils.DummyObject):
        return found
    torchvision_module = f"{_PIXTRAL}.image_processing_pixtral"
    pil = importlib.import_module(f"{_PIXTRAL}.image_processing_pil_pixtral")
    stand_in = types.ModuleType(torchvision_module)
    stand_in.get_resize_output_image_size = pil.get_resize_output_image_size
    sys.modules[torchvision_module] = stand_in
    try:
        return importlib.import_module(f"{_PIXTRAL}.processing_pixtral").PixtralProcessor
    finally:
        del sys.modules[torchvision_module]


@functools.cache
def image_only_processor_class(processor_class: type) -> type:
    """A subclass of a Qwen-style processor without its video processor.

    Qwen2-VL's processor insists on a video processor, and transformers builds video
    processors only when torchvision is installed. Images need none of it, so this subclass
    keeps the real class's image and text handling and drops the video slot.
    """
    from transformers.processing_utils import ProcessorMixin

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.video_processor = None
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    name = f"ImageOnly{processor_class.__name__}"
    return type(name, (processor_class,), {"__init__": __init__, "__module__": __name__})


@functools.cache
def without_video_processor(processor_class: type) -> type:
    """A subclass of any image+video processor that runs the real ``__init__`` but has no
    video slot (LLaVA-OneVision, Qwen3-VL, InternVL, SmolVLM need torchvision for theirs).

    ``ProcessorMixin`` reads a processor's parts from its ``__init__`` signature; this one's
    names only the image processor and the tokenizer, so the real ``__init__``'s ``None`` video
    processor is dropped, and ``from_pretrained`` restores the saved settings of the two.
    """
    real_init = processor_class.__init__
    real_signature = inspect.signature(real_init)
    wants_video = "video_processor" in real_signature.parameters

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        if wants_video:
            kwargs["video_processor"] = None
        real_init(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    # the real settings (image_seq_len, ...) stay in the signature, so they are saved and loaded
    __init__.__signature__ = real_signature.replace(
        parameters=[p for name, p in real_signature.parameters.items() if name != "video_processor"]
    )
    parts = ("self", "image_processor", "tokenizer", "video_processor")
    settings = {name for name in real_signature.parameters if name not in parts} | {"chat_template"}

    @classmethod
    def from_args_and_dict(cls, args, processor_dict, **kwargs):
        """``ProcessorMixin`` keeps only the saved settings its ``__init__``'s code names; this
        one's code names none, so they are passed on here."""
        given = {**processor_dict, **kwargs}
        return cls(*args, **{name: given[name] for name in settings if name in given})

    def to_dict(self) -> dict[str, Any]:
        """Saved under the real class's name, so a folder it writes loads anywhere."""
        return {**processor_class.to_dict(self), "processor_class": processor_class.__name__}

    name = f"ImageOnly{processor_class.__name__}"
    namespace = {
        "__init__": __init__,
        "to_dict": to_dict,
        "from_args_and_dict": from_args_and_dict,
        "__module__": __name__,
    }
    return type(name, (processor_class,), namespace)
