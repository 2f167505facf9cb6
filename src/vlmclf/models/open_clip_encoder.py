"""``open_clip:<source>[?options]``: OpenCLIP models behind ``ImageTextEncoder``.

Sources: ``<arch>:<pretrained tag or weights file>`` (``ViT-B-32:openai``), ``hf-hub:<org/name>``
and ``local-dir:<folder>`` (open_clip's own schemes, passed on whole). Options after ``?``,
joined by ``&``: ``tokenizer=<folder>`` (a local Hugging Face tokenizer, for SigLIP models
whose tokenizer open_clip would otherwise fetch from the hub), ``mean=r,g,b``, ``std=r,g,b``
and ``resize=shortest|longest|squash`` (override the preprocessing). The whole spec is the
model's name in the RunSpec, so each option is part of the run's identity.

open_clip is an optional dependency (``pip install vlmclf[open_clip]``); it is imported only
when such a model is asked for, and every way that fails (missing package, a torchvision built
for another torch, a bad path) is a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from vlmclf.models import compat

OPEN_CLIP_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
SOURCE_SCHEMES = ("hf-hub:", "local-dir:")
RESIZE_MODES = ("shortest", "longest", "squash")
OPTION_KEYS = ("tokenizer", "mean", "std", "resize")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
USAGE = (
    "open_clip:<arch>:<pretrained-or-path>, open_clip:hf-hub:<org/name> or "
    "open_clip:local-dir:<folder>, optionally followed by ?tokenizer=DIR&mean=r,g,b&std=r,g,b"
    "&resize=shortest|longest|squash"
)


class OpenClipUnavailable(ImportError, ValueError):
    """open_clip cannot be imported; a ValueError too, so the CLI prints it as one line."""


@dataclass(frozen=True)
class OpenClipSource:
    """What an ``open_clip:`` spec asks for, parsed and checked before open_clip is imported."""

    model_name: str
    pretrained: str | None = None
    tokenizer_dir: str | None = None
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None
    resize_mode: str | None = None

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``open_clip.create_model_and_transforms`` beyond the name."""
        kwargs: dict[str, Any] = {"pretrained": self.pretrained}
        if self.image_mean is not None:
            kwargs["image_mean"] = self.image_mean
        if self.image_std is not None:
            kwargs["image_std"] = self.image_std
        if self.resize_mode is not None:
            kwargs["image_resize_mode"] = self.resize_mode
        return kwargs


def _fail(spec: str, reason: str) -> ValueError:
    return ValueError(f"open_clip spec 'open_clip:{spec}': {reason}")


def _three_floats(spec: str, key: str, text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise _fail(spec, f"{key}= takes three comma-separated numbers (r,g,b), got {text!r}")
    if key == "std" and min(values) <= 0:
        raise _fail(spec, f"std= values must be positive, got {text!r}")
    return values  # type: ignore[return-value]


def _parse_options(spec: str, query: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise _fail(spec, f"option {item!r} must be key=value")
        if key not in OPTION_KEYS:
            raise _fail(spec, f"unknown option {key!r}; known: {', '.join(OPTION_KEYS)}")
        if key in ("mean", "std"):
            options[f"image_{key}"] = _three_floats(spec, key, value)
        elif key == "resize":
            if value not in RESIZE_MODES:
                raise _fail(
                    spec, f"resize= must be one of {', '.join(RESIZE_MODES)}, got {value!r}"
                )
            options["resize_mode"] = value
        else:
            if not Path(value).is_dir():
                raise _fail(spec, f"tokenizer folder {value} does not exist")
            options["tokenizer_dir"] = value
    return options


def _looks_like_path(pretrained: str) -> bool:
    return "/" in pretrained or "\\" in pretrained or pretrained.endswith(WEIGHT_SUFFIXES)


def parse_open_clip_spec(spec: str) -> OpenClipSource:
    """Parse the part after ``open_clip:``; paths are checked here, before any import."""
    source, _, query = spec.partition("?")
    options = _parse_options(spec, query)
    if source.startswith(SOURCE_SCHEMES):
        scheme, _, target = source.partition(":")
        if not target:
            raise _fail(spec, f"{scheme}: needs a {'hub id' if scheme == 'hf-hub' else 'folder'}")
        if scheme == "local-dir" and not Path(target).is_dir():
            raise _fail(spec, f"local-dir folder {target} does not exist")
        if scheme == "hf-hub" and target.count("/") != 1:
            raise _fail(spec, f"hf-hub: needs an id like org/name, got {target!r}")
        return OpenClipSource(model_name=source, **options)
    arch, sep, pretrained = source.partition(":")
    if not sep or not arch or not pretrained:
        raise _fail(spec, f"must be {USAGE}, e.g. open_clip:ViT-B-32:openai")
    if _looks_like_path(pretrained) and not Path(pretrained).is_file():
        raise _fail(spec, f"weights file {pretrained} does not exist")
    return OpenClipSource(model_name=arch, pretrained=pretrained, **options)


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as err:
        raise OpenClipUnavailable(
            "open_clip: models need the optional package open_clip_torch; "
            "install it with: pip install vlmclf[open_clip]"
        ) from err
    except Exception as err:  # e.g. a torchvision built for another torch fails at import
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OpenClipUnavailable(
            f"open_clip is installed but fails to import ({type(err).__name__}: {reason}); "
            "reinstall open_clip_torch and torchvision to match the installed torch"
        ) from err
    return open_clip


class OpenClipEncoder:
    """An OpenCLIP model with its preprocessing transform and tokenizer."""

    def __init__(
        self, model: Any, preprocess: Any, tokenizer: Any, name: str, batch_size: int = 256
    ) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.context_length = int(getattr(model, "context_length", 77))
        self.logit_scale = float(model.logit_scale.detach().exp())

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        parts = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in chunk])
            with torch.inference_mode():
                features = self.model.encode_image(pixels.to(self.device, self.dtype))
            parts.append(features.float().cpu())
        return F.normalize(torch.cat(parts), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        parts = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[start : start + self.batch_size]).to(self.device)
            with torch.inference_mode():
                features = self.model.encode_text(tokens)
            parts.append(features.float().cpu())
        return F.normalize(torch.cat(parts), dim=-1)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _tokenizer(open_clip: Any, source: OpenClipSource, context_length: int) -> Any:
    """open_clip's tokenizer for the model, or an ``HFTokenizer`` over a local folder with the
    arguments open_clip's config would give it (SigLIP canonicalises text, for instance)."""
    if source.tokenizer_dir is None:
        return open_clip.get_tokenizer(source.model_name)
    config = open_clip.get_model_config(source.model_name) or {}
    kwargs = dict(config.get("text_cfg", {}).get("tokenizer_kwargs", {}))
    return open_clip.tokenizer.HFTokenizer(
        source.tokenizer_dir, context_length=context_length, **kwargs
    )


def load_open_clip_model(
    name: str, *, device: str = "cpu", dtype: str = "float32", **_: Any
) -> OpenClipEncoder:
    """``name`` is the spec after ``open_clip:`` (see the module docstring)."""
    source = parse_open_clip_spec(name)
    compat.torch_dtype(dtype)
    open_clip = _import_open_clip()
    failures = (RuntimeError, OSError, ValueError, KeyError, AssertionError)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            source.model_name,
            device=compat.torch_device(device),
            precision=OPEN_CLIP_PRECISION[dtype],
            **source.create_kwargs(),
        )
    except failures as err:
        raise ValueError(f"open_clip: cannot load 'open_clip:{name}': {_first_line(err)}") from err
    try:
        tokenizer = _tokenizer(open_clip, source, int(getattr(model, "context_length", 77)))
    except failures as err:
        raise ValueError(
            f"open_clip: cannot load the tokenizer of 'open_clip:{name}': {_first_line(err)} "
            "(offline? give a local one with ?tokenizer=DIR)"
        ) from err
    return OpenClipEncoder(model, preprocess, tokenizer, f"open_clip:{name}")
