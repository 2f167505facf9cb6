"""transformers models behind the ``VisionLanguageModel`` and ``ImageTextEncoder`` protocols.

One wrapper per kind serves every family: the family's adapter (``families.py``) supplies the
prompt format, where the language model sits and how positions are numbered under padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature, GenerationConfig

from vlmclf.models import compat
from vlmclf.models.base import HiddenFeatures
from vlmclf.models.families import FamilyAdapter
from vlmclf.models.prompt_formats import fill_template, image_token

FEATURE_POSITIONS = ("real", "all")
"""How ``hidden_features`` pools: over the real tokens (clean) or every position (the paper)."""
PROBE_IMAGE_SIZE = (448, 448)
"""(width, height) of the blank image ``prompt_length`` counts with by default. LLaVA-NeXT and
Qwen2-VL give an image more or fewer tokens depending on its size; pass ``image_size``."""


def _rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    return [image if image.mode == "RGB" else image.convert("RGB") for image in images]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_pairs(images: Sequence[Image.Image], questions: Sequence[str]) -> None:
    if len(images) != len(questions):
        raise ValueError(f"got {len(images)} images but {len(questions)} questions")
    if not images:
        raise ValueError("got an empty batch")


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last attended token (works for left and right padding)."""
    length = attention_mask.shape[-1]
    positions = torch.arange(length, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, -1).max(dim=-1).values


class HFVisionLanguageModel:
    """A generative transformers VLM (LLaVA, LLaVA-NeXT, BLIP-2, InstructBLIP, Qwen2-VL, ...).

    ``model``, ``processor``, ``tokenizer``, ``adapter``, ``device`` and ``dtype`` are public:
    scoring methods build on ``build_inputs``, ``forward_inputs`` and ``language_model_inputs``.
    """

    def __init__(self, model: Any, processor: Any, adapter: FamilyAdapter, name: str) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.adapter = adapter
        self.name = name
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = compat.model_device(model)
        self.dtype = next(model.parameters()).dtype
        self.text_config = model.config.get_text_config()
        self.context_length = int(getattr(self.text_config, "max_position_embeddings", 0) or 0)
        self.is_encoder_decoder = bool(getattr(self.text_config, "is_encoder_decoder", False))
        self.prompt_template: str | None = None  # a protocol's override of the family format
        self.answer_marker: str | None = None  # read the answer after it (the paper's code)

    def format_prompt(self, question: str) -> str:
        """The family's full prompt for a bare question, with the image placeholder; a run's
        ``prompt_template`` (``{image}``, ``{question}``) replaces the family's format."""
        if self.prompt_template is not None:
            return fill_template(self.prompt_template, image_token(self.processor), question)
        return self.adapter.prompt(question, self.processor, self.model.config)

    def build_inputs(self, images: Sequence[Image.Image], questions: Sequence[str]) -> BatchFeature:
        """Processor output for the formatted prompts (left-padded), on the model's device.

        Floating tensors (pixel values) are cast to the model's dtype; ``input_ids`` already
        hold every image token, so hidden states line up with ``attention_mask``.
        """
        _check_pairs(images, questions)
        prompts = [self.format_prompt(question) for question in questions]
        pictures: list[Any] = _rgb(images)
        if self.adapter.nest_images:
            pictures = [[picture] for picture in pictures]
        options = {} if self._adds_special_tokens(prompts) else {"add_special_tokens": False}
        batch = self.processor(
            images=pictures, text=prompts, return_tensors="pt", padding=True, **options
        )
        if self.adapter.qformer_reads_prompt:
            batch.update(self._qformer_inputs(prompts))
        moved = {}
        for key, value in batch.items():
            if key == "labels":  # PaliGemma's processor adds training labels; inference has none
                continue
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            moved[key] = value
        return BatchFeature(data=moved)

    def _adds_special_tokens(self, prompts: list[str]) -> bool:
        """False where the prompts already begin with BOS (chat templates that write it, as
        Gemma 3's, Mistral 3's and Llama 3's do), as transformers' own processor chat path
        decides, so the tokenizer does not add a second; and for families whose processor
        places BOS itself (Llama 3.2 Vision)."""
        bos = self.tokenizer.bos_token
        begins_with_bos = bool(bos) and all(prompt.startswith(bos) for prompt in prompts)
        return self.adapter.add_special_tokens and not begins_with_bos

    def _qformer_inputs(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        limit = self.model.config.qformer_config.max_position_embeddings
        tokens = self.processor.qformer_tokenizer(
            prompts, padding=True, truncation=True, max_length=limit, padding_side="right",
            return_tensors="pt",
        )  # fmt: skip
        return {
            "qformer_input_ids": tokens["input_ids"],
            "qformer_attention_mask": tokens["attention_mask"],
        }

    def forward_inputs(self, batch: BatchFeature) -> dict[str, Any]:
        """Keyword arguments for ``model(...)`` that give padded rows the positions of unpadded
        ones (explicit position ids for families that would otherwise count the pads)."""
        kwargs = dict(batch)
        if self.adapter.position_ids == "from_mask" and "attention_mask" in batch:
            positions = positions_from_mask(batch["attention_mask"])
            kwargs["position_ids"] = positions + self.adapter.first_position
        return kwargs

    def language_model_inputs(self, batch: BatchFeature) -> dict[str, Any]:
        """What the text decoder receives for ``batch``: ``inputs_embeds`` with image features
        merged in, ``attention_mask``, ``position_ids`` (3-D for Qwen2-VL, None where the
        decoder derives them) and whatever else the family passes. The decoder itself is not
        run; the family's own merging code is, so this stays right across releases."""
        captured: dict[str, Any] = {}
        with torch.inference_mode(), compat.capture_call_kwargs(self.language_model, captured):
            self.model(**self.forward_inputs(batch), use_cache=False)
        if "inputs_embeds" not in captured:
            raise RuntimeError(f"{self.name}: the language model was not called with embeddings")
        return captured

    @property
    def language_model(self) -> torch.nn.Module:
        """The text decoder (no vocabulary head); see ``adapter.lm_head(model)`` for the head."""
        return self.adapter.language_model(self.model)

    def _greedy_config(self, max_new_tokens: int) -> GenerationConfig:
        source, tokenizer = self.model.generation_config, self.tokenizer
        eos = source.eos_token_id if source.eos_token_id is not None else tokenizer.eos_token_id
        pad = source.pad_token_id if source.pad_token_id is not None else tokenizer.pad_token_id
        return GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            bos_token_id=source.bos_token_id,
            eos_token_id=eos,
            pad_token_id=pad,
            decoder_start_token_id=source.decoder_start_token_id,
        )

    def generate_tokens(
        self, images: list[Image.Image], questions: list[str], max_new_tokens: int
    ) -> list[list[int]]:
        """Greedy continuation token ids per pair (prompt, padding and the tokens after the
        first end-of-sequence removed; that token itself kept)."""
        batch, config, output = self._generate_output(images, questions, max_new_tokens)
        new_tokens = output if self.is_encoder_decoder else output[:, batch["input_ids"].shape[1] :]
        eos = config.eos_token_id
        stops = set(eos if isinstance(eos, list) else [eos]) - {None}
        skip_first = {config.decoder_start_token_id} if self.is_encoder_decoder else set()
        return [_until_stop(row.tolist(), stops, skip_first) for row in new_tokens]

    def _generate_output(
        self, images: list[Image.Image], questions: list[str], max_new_tokens: int
    ) -> tuple[BatchFeature, GenerationConfig, torch.Tensor]:
        """(inputs, greedy config, ``generate``'s output as it is: prompt, pads and all)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        batch = self.build_inputs(images, questions)
        config = self._greedy_config(max_new_tokens)
        with torch.inference_mode():
            output = self.model.generate(**batch, generation_config=config)
        return batch, config, output

    def generate(
        self, images: list[Image.Image], questions: list[str], max_new_tokens: int
    ) -> list[str]:
        """Greedy answers with the prompt stripped, one per (image, question) pair.

        With an ``answer_marker`` the answer is read as the paper's code reads it: the whole
        output decoded (prompt included), then the text after the marker's last occurrence
        (``ASSISTANT:``, ``Answer:``, ``[/INST]``); it differs from the new tokens where the
        prompt ends inside the answer (a CoT cue after the marker) or the model writes the
        marker again."""
        if self.answer_marker is not None:
            _, _, output = self._generate_output(images, questions, max_new_tokens)
            texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
            return [text.split(self.answer_marker)[-1].strip() for text in texts]
        rows = self.generate_tokens(images, questions, max_new_tokens)
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def prompt_length(self, question: str, image_size: tuple[int, int] | None = None) -> int:
        """Context tokens the formatted prompt takes, image tokens included, for a blank image
        of ``image_size`` (width, height; default ``PROBE_IMAGE_SIZE``)."""
        probe = Image.new("RGB", image_size or PROBE_IMAGE_SIZE, (128, 128, 128))
        batch = self.build_inputs([probe], [question])
        return int(batch["attention_mask"].sum())

    def hidden_features(
        self, images: list[Image.Image], questions: list[str], layer: int = -1,
        positions: str = "real",
    ) -> HiddenFeatures:  # fmt: skip
        """Layer ``layer`` of the language model (0 = embeddings, -1 = last) at each prompt's
        last token and averaged over its tokens, image tokens included.

        ``positions="real"`` numbers positions past left padding and averages the real tokens
        only; ``"all"`` is the paper's ``extract_feature.py``: the processor's batch sent as it
        is and the mean taken over every position, pads included where a batch pads."""
        if self.is_encoder_decoder:
            raise ValueError(
                f"{self.name}: hidden_features needs a decoder-only language model, "
                "this one is encoder-decoder"
            )
        if positions not in FEATURE_POSITIONS:
            raise ValueError(f"positions must be one of {FEATURE_POSITIONS}, got {positions!r}")
        batch = self.build_inputs(images, questions)
        inputs = self.forward_inputs(batch) if positions == "real" else dict(batch)
        with torch.inference_mode():
            output = self.model(**inputs, output_hidden_states=True, use_cache=False)
        states = text_hidden_states(output)
        if not -len(states) <= layer < len(states):
            raise ValueError(f"layer {layer} out of range for {len(states)} hidden states")
        if positions == "all":  # pooled in the model's dtype, as the paper's code pools
            raw = states[layer]
            return HiddenFeatures(
                last_token=raw[:, -1].float().cpu(), mean=raw.mean(dim=1).float().cpu()
            )
        hidden = states[layer].float()
        mask = batch["attention_mask"].to(hidden.device)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, last_real_index(mask)]
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return HiddenFeatures(last_token=last.cpu(), mean=mean.cpu())


def _until_stop(tokens: list[int], stops: set[int], skip_first: set[int]) -> list[int]:
    if tokens and tokens[0] in skip_first:
        tokens = tokens[1:]
    for index, token in enumerate(tokens):
        if token in stops:
            return tokens[: index + 1]
    return tokens


def text_hidden_states(output: Any) -> tuple[torch.Tensor, ...]:
    """The language model's hidden states from a VLM forward output (BLIP keeps them in
    ``language_model_outputs``)."""
    states = getattr(output, "hidden_states", None)
    if states is None:
        inner = getattr(output, "language_model_outputs", None)
        states = getattr(inner, "hidden_states", None)
    if states is None:
        raise RuntimeError(f"no hidden states in {type(output).__name__}")
    return tuple(states)


class HFImageTextEncoder:
    """A CLIP-style dual encoder (CLIP, SigLIP) with L2-normalised float32 embeddings."""

    def __init__(
        self, model: Any, processor: Any, adapter: FamilyAdapter, name: str, batch_size: int = 256
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.adapter = adapter
        self.name = name
        self.batch_size = batch_size
        self.device = compat.model_device(model)
        self.dtype = next(model.parameters()).dtype
        text_config = model.config.text_config
        self.context_length = int(text_config.max_position_embeddings)
        scale, bias = getattr(model, "logit_scale", None), getattr(model, "logit_bias", None)
        self.logit_scale = float(scale.detach().exp()) if scale is not None else 1.0
        self.logit_bias = float(bias.detach()) if bias is not None else 0.0

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            raise ValueError("encode_images got no images")
        parts = []
        for chunk in _chunks(_rgb(images), self.batch_size):
            pixels = self.processor.image_processor(images=list(chunk), return_tensors="pt")
            pixel_values = pixels["pixel_values"].to(self.device, self.dtype)
            with torch.inference_mode():
                features = self.model.get_image_features(pixel_values=pixel_values)
            parts.append(compat.features_tensor(features).float().cpu())
        return F.normalize(torch.cat(parts), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            raise ValueError("encode_texts got no texts")
        parts = []
        max_length = min(self.context_length, self.tokenizer.model_max_length)
        # SigLIP was trained on texts padded to max length, with the pads attended to.
        padding = "max_length" if self.adapter.pad_text_to_max_length else True
        for chunk in _chunks(texts, self.batch_size):
            tokens = self.tokenizer(
                list(chunk), padding=padding, truncation=True, max_length=max_length,
                return_tensors="pt",
            )  # fmt: skip
            inputs = {"input_ids": tokens["input_ids"].to(self.device)}
            if not self.adapter.pad_text_to_max_length:
                inputs["attention_mask"] = tokens["attention_mask"].to(self.device)
            with torch.inference_mode():
                features = self.model.get_text_features(**inputs)
            parts.append(compat.features_tensor(features).float().cpu())
        return F.normalize(torch.cat(parts), dim=-1)


def wrap_model(
    model: Any,
    processor: Any,
    adapter: FamilyAdapter,
    name: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    placed: bool = False,
) -> HFVisionLanguageModel | HFImageTextEncoder:
    """Put ``model`` in ``dtype`` as transformers loads it and on ``device`` (unless ``placed``
    by a device map), and wrap it."""
    if not placed:
        model = compat.as_loaded_in(model, dtype).to(device=compat.torch_device(device))
    if adapter.kind == "encoder":
        return HFImageTextEncoder(model, processor, adapter, name)
    return HFVisionLanguageModel(model, processor, adapter, name)
