"""Supervised image classifiers (``AutoModelForImageClassification``): ResNet, ViT, ConvNeXt, ...

The paper and the thesis compare VLMs against supervised classifiers; these wrap such a
checkpoint as an ``ImageClassifier``: log-probabilities over the checkpoint's own labels
(``config.id2label``). Mapping those labels onto a run's class list is ``label_columns``'s job.

``random:resnet`` and ``random:vit`` are tiny random ones whose labels are every name of the
shipped class lists (ImageNet's 1000 first), so they map onto any shipped dataset by name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from vlmclf.models import compat

IMAGENET_CLASSES = 1000
RANDOM_IMAGE_SIZE = 32
_SHOWN = 8  # names listed in a mapping error


@runtime_checkable
class ImageClassifier(Protocol):
    """A model with a fixed label set that scores an image against each of its labels."""

    name: str
    labels: list[str]

    def log_probs(self, images: list[Image.Image]) -> torch.Tensor:
        """Log-softmax over ``labels``, shape (B, len(labels)), float32 on CPU."""
        ...


class HFImageClassifier:
    """A transformers image-classification checkpoint with its image processor."""

    def __init__(self, model: Any, image_processor: Any, name: str, batch_size: int = 64):
        self.model = model.eval()
        self.image_processor = image_processor
        self.name = name
        self.batch_size = batch_size
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.labels = checkpoint_labels(model.config)

    def log_probs(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            raise ValueError("log_probs got no images")
        parts = []
        for start in range(0, len(images), self.batch_size):
            chunk = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            pixels = self.image_processor(images=chunk, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                logits = self.model(pixel_values=pixels.to(self.device, self.dtype)).logits
            parts.append(torch.log_softmax(logits.float(), dim=-1).cpu())
        return torch.cat(parts)


def checkpoint_labels(config: Any) -> list[str]:
    """``config.id2label`` as a list in output order, with an error if it has gaps."""
    id2label = {int(index): str(label) for index, label in (config.id2label or {}).items()}
    count = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
    missing = [index for index in range(count) if index not in id2label]
    if missing:
        raise ValueError(f"the checkpoint's id2label has no name for outputs {missing[:_SHOWN]}")
    return [id2label[index] for index in range(count)]


def is_image_classifier_config(config: Any) -> bool:
    """Whether a config was saved from an ``*ForImageClassification`` head (ResNet, ViT, ...)."""
    architectures = getattr(config, "architectures", None) or []
    return any("ForImageClassification" in name for name in architectures)


def normalise_label(text: str) -> str:
    """Case, underscores and runs of spaces do not distinguish two class names."""
    return re.sub(r"\s+", " ", text.replace("_", " ")).strip().lower()


def _label_synonyms(label: str) -> set[str]:
    """HF ImageNet labels list synonyms: ``"tench, Tinca tinca"`` names both."""
    return {normalise_label(label)} | {normalise_label(part) for part in label.split(",")}


def label_columns(
    labels: Sequence[str], class_names: Sequence[str], imagenet_names: Sequence[str] | None = None
) -> list[list[int]]:
    """For each run class, the checkpoint outputs that stand for it.

    An ImageNet-1k head (1000 outputs) scoring our ImageNet list (``imagenet_names``) maps by
    index, since the checkpoint's names ("tench, Tinca tinca") differ from ours ("tench");
    anything else maps by name (case-insensitively, any comma-separated synonym). A class with
    no output is an error that lists them.
    """
    by_index = imagenet_names is not None and list(class_names) == list(imagenet_names)
    if by_index and len(labels) == IMAGENET_CLASSES:
        return [[index] for index in range(IMAGENET_CLASSES)]
    by_name: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        for synonym in _label_synonyms(label):
            by_name.setdefault(synonym, []).append(index)
    columns = [by_name.get(normalise_label(name), []) for name in class_names]
    unmapped = [name for name, found in zip(class_names, columns, strict=True) if not found]
    if unmapped:
        shown = ", ".join(repr(name) for name in unmapped[:_SHOWN])
        more = f" and {len(unmapped) - _SHOWN} more" if len(unmapped) > _SHOWN else ""
        examples = ", ".join(repr(label) for label in labels[:_SHOWN])
        raise ValueError(
            f"--method classifier: {len(unmapped)} of the run's {len(class_names)} classes match "
            f"no label of the checkpoint ({len(labels)} labels, e.g. {examples}): {shown}{more}; "
            "pass --classes with the checkpoint's names"
        )
    return columns


def class_log_probs(log_probs: torch.Tensor, columns: list[list[int]]) -> torch.Tensor:
    """(B, C) log-probability of each run class: the log of the summed probability of its
    outputs (one output for almost every class)."""
    return torch.stack([torch.logsumexp(log_probs[:, cols], dim=-1) for cols in columns], dim=1)


# ---------------------------------------------------------------- loading


def load_hf_image_classifier(
    ident: str,
    config: Any,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    device_map: str | None = None,
    trust_remote_code: bool = False,
) -> HFImageClassifier:
    """Load a checkpoint whose config says it is an image classifier."""
    from transformers import AutoModelForImageClassification

    image_processor = compat.load_image_processor(ident, trust_remote_code)
    model = AutoModelForImageClassification.from_pretrained(
        ident, config=config, **compat.from_pretrained_kwargs(dtype, device_map, trust_remote_code)
    )
    if device_map is None:  # from_pretrained put it in dtype; .to(dtype) would round buffers
        model = model.to(device=compat.torch_device(device))
    return HFImageClassifier(model, image_processor, f"hf:{ident}")


def random_classifier_labels() -> list[str]:
    """ImageNet's 1000 names in order, then every other shipped list's new names."""
    from vlmclf.data.classnames import CLASS_LISTS, load_class_names

    labels = load_class_names("imagenet")
    seen = {normalise_label(name) for name in labels}
    for list_name in CLASS_LISTS:
        for name in load_class_names(list_name):
            if normalise_label(name) not in seen:
                seen.add(normalise_label(name))
                labels.append(name)
    return labels


def _random_config(family: str, labels: list[str]) -> tuple[Any, Any]:
    import transformers as tf

    id2label = dict(enumerate(labels))
    common = {"id2label": id2label, "label2id": {}, "num_labels": len(labels)}
    size = {"height": RANDOM_IMAGE_SIZE, "width": RANDOM_IMAGE_SIZE}
    if family == "resnet":
        config = tf.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
            architectures=["ResNetForImageClassification"], **common,
        )  # fmt: skip
        processor = tf.ConvNextImageProcessorPil(
            size={"shortest_edge": RANDOM_IMAGE_SIZE}, crop_pct=1.0
        )
        return config, processor
    config = tf.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=RANDOM_IMAGE_SIZE, patch_size=8, architectures=["ViTForImageClassification"],
        **common,
    )  # fmt: skip
    return config, tf.ViTImageProcessorPil(size=size)


RANDOM_CLASSIFIERS = ("resnet", "vit")


def build_random_classifier(family: str, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """(model, image processor) of a tiny random ``family`` classifier; weights from ``seed``."""
    from transformers import AutoModelForImageClassification

    if family not in RANDOM_CLASSIFIERS:
        raise ValueError(f"no random classifier {family!r}; known: {list(RANDOM_CLASSIFIERS)}")
    config, processor = _random_config(family, random_classifier_labels())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageClassification.from_config(config)
    return model.eval(), processor


def load_random_classifier(
    family: str, *, device: str = "cpu", dtype: str = "float32", seed: int = 0
) -> HFImageClassifier:
    model, processor = build_random_classifier(family, seed)
    model = compat.as_loaded_in(model, dtype).to(device=compat.torch_device(device))
    return HFImageClassifier(model, processor, f"random:{family}")
