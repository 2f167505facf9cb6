"""The one table of model-family differences.

Families differ in prompt format, in the transformers classes that load them, in where their
language model sits inside the wrapper, and in how positions are assigned under left padding.
Every such difference lives in a ``FamilyAdapter`` row below (the prompt formats it names are in
``prompt_formats.py``); code elsewhere looks the adapter up (``adapter_for_config``,
``adapter_by_name``) and never branches on model names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from vlmclf.models.prompt_formats import (
    blip2_prompt,
    chat_prompt,
    instructblip_prompt,
    llava_next_prompt,
    llava_prompt,
    mllama_prompt,
    paligemma_prompt,
    phi3_v_prompt,
    rendered_chat_prompt,
)

PromptFormatter = Callable[[str, Any, Any], str]
"""(question, processor, config) -> full prompt text with the family's image placeholder."""


@dataclass(frozen=True)
class FamilyAdapter:
    """Everything that differs between model families, as data.

    ``position_ids``: ``"from_mask"`` means the language model numbers positions by index unless
    told otherwise, so callers that left-pad must pass ``cumsum(attention_mask) - 1``
    (Llama, Mistral, Vicuna); ``"internal"`` means the model derives them itself from the
    attention mask (OPT's learned positions) or from the image grid (Qwen2-VL's M-RoPE), and
    callers must not pass 2-D positions.
    ``language_model_path`` / ``lm_head_path``: dotted attributes, from the top-level model, of
    the text decoder (receives the merged ``inputs_embeds``, returns hidden states) and of the
    output projection to the vocabulary (None: ask ``model.get_decoder()``).
    ``image_tokens_first``: the processor puts the image tokens before BOS and before any left
    padding (BLIP-2, InstructBLIP), so a padded row reads ``[img.. pad.. bos text..]``.
    ``qformer_reads_prompt``: the Q-Former also reads the prompt (InstructBLIP); its BERT
    positions count from the first token, so its copy must be right-padded and truncated to
    its position table.
    ``video_processor_optional``: the real processor also wants a video processor, which
    transformers builds only with torchvision; without one, an image-only subclass is used.
    ``nest_images``: the processor takes one list of images per prompt (Gemma 3, Idefics3).
    ``first_position``: the position of a row's first real token (PaliGemma counts from 1).
    ``add_special_tokens``: False where the processor places BOS itself (Llama 3.2 Vision's
    puts it after a leading ``<|image|>``), so the tokenizer must not add one. (Prompts that
    begin with BOS never get a second, whatever the family: see ``build_inputs``.)
    ``vision_model_type``: set where one ``model_type`` holds families that differ in their
    vision tower (``llava`` with a Pixtral tower is Pixtral-12B); it must match as well.
    """

    name: str
    kind: Literal["encoder", "vlm"]
    model_types: tuple[str, ...]
    model_class: str
    processor_class: str
    format_prompt: PromptFormatter | None = None
    language_model_path: str | None = "model.language_model"
    lm_head_path: str = "lm_head"
    position_ids: Literal["from_mask", "internal"] = "from_mask"
    image_tokens_first: bool = False
    qformer_reads_prompt: bool = False
    video_processor_optional: bool = False
    pad_text_to_max_length: bool = False
    nest_images: bool = False
    first_position: int = 0
    add_special_tokens: bool = True
    vision_model_type: str | None = None

    def prompt(self, question: str, processor: Any, config: Any) -> str:
        """The full prompt text for a bare question, image placeholder included."""
        if self.format_prompt is None:
            raise TypeError(f"{self.name} is an image-text encoder; it has no prompt format")
        return self.format_prompt(question, processor, config)

    def language_model(self, model: nn.Module) -> nn.Module:
        """The text decoder inside ``model`` (a base model that returns hidden states); the
        generic adapter asks the model (``get_decoder``) since layouts vary."""
        if self.language_model_path is None:
            return model.get_decoder()
        return resolve_attribute(model, self.language_model_path)

    def lm_head(self, model: nn.Module) -> nn.Module:
        """The projection from the decoder's last hidden state to vocabulary logits."""
        return resolve_attribute(model, self.lm_head_path)

    def model_cls(self) -> type:
        import transformers

        return getattr(transformers, self.model_class)

    def processor_cls(self) -> type:
        from vlmclf.models.compat import processor_class

        return processor_class(self.processor_class)


def resolve_attribute(root: Any, dotted: str) -> Any:
    """``resolve_attribute(model, "language_model.model")`` with an error naming the path."""
    node = root
    for part in dotted.split("."):
        if not hasattr(node, part):
            raise AttributeError(f"{type(root).__name__} has no {dotted!r} (missing {part!r})")
        node = getattr(node, part)
    return node


FAMILIES: tuple[FamilyAdapter, ...] = (
    FamilyAdapter(
        name="clip",
        kind="encoder",
        model_types=("clip",),
        model_class="CLIPModel",
        processor_class="CLIPProcessor",
    ),
    FamilyAdapter(
        name="siglip",
        kind="encoder",
        model_types=("siglip",),
        model_class="SiglipModel",
        processor_class="SiglipProcessor",
        pad_text_to_max_length=True,  # SigLIP pools the last position: trained on max-length pads
    ),
    FamilyAdapter(
        name="llava",
        kind="vlm",
        model_types=("llava",),
        model_class="LlavaForConditionalGeneration",
        processor_class="LlavaProcessor",
        format_prompt=llava_prompt,
    ),
    FamilyAdapter(
        name="llava_next",
        kind="vlm",
        model_types=("llava_next",),
        model_class="LlavaNextForConditionalGeneration",
        processor_class="LlavaNextProcessor",
        format_prompt=llava_next_prompt,
    ),
    FamilyAdapter(
        name="blip2",
        kind="vlm",
        model_types=("blip-2", "blip_2"),
        model_class="Blip2ForConditionalGeneration",
        processor_class="Blip2Processor",
        format_prompt=blip2_prompt,
        language_model_path="language_model.model.decoder",  # OPTForCausalLM skips OPTModel
        lm_head_path="language_model.lm_head",
        position_ids="internal",  # OPT numbers positions by cumsum(attention_mask)
        image_tokens_first=True,
    ),
    FamilyAdapter(
        name="instructblip",
        kind="vlm",
        model_types=("instructblip",),
        model_class="InstructBlipForConditionalGeneration",
        processor_class="InstructBlipProcessor",
        format_prompt=instructblip_prompt,
        language_model_path="language_model.model",
        lm_head_path="language_model.lm_head",
        image_tokens_first=True,
        qformer_reads_prompt=True,
    ),
    FamilyAdapter(
        name="qwen2_vl",
        kind="vlm",
        model_types=("qwen2_vl",),
        model_class="Qwen2VLForConditionalGeneration",
        processor_class="Qwen2VLProcessor",
        format_prompt=chat_prompt,
        position_ids="internal",  # M-RoPE: (3, B, L) positions from input_ids + image grid + mask
        video_processor_optional=True,
    ),
    FamilyAdapter(
        name="qwen2_5_vl",
        kind="vlm",
        model_types=("qwen2_5_vl",),
        model_class="Qwen2_5_VLForConditionalGeneration",
        processor_class="Qwen2_5_VLProcessor",
        format_prompt=chat_prompt,
        position_ids="internal",
        video_processor_optional=True,
    ),
)

RECENT_FAMILIES: tuple[FamilyAdapter, ...] = (
    FamilyAdapter(
        name="llava_onevision",
        kind="vlm",
        model_types=("llava_onevision",),
        model_class="LlavaOnevisionForConditionalGeneration",
        processor_class="LlavaOnevisionProcessor",
        format_prompt=chat_prompt,
        video_processor_optional=True,
    ),
    FamilyAdapter(
        name="gemma3",
        kind="vlm",
        model_types=("gemma3",),
        model_class="Gemma3ForConditionalGeneration",
        processor_class="Gemma3Processor",
        format_prompt=chat_prompt,
        nest_images=True,
    ),
    FamilyAdapter(
        name="qwen3_vl",
        kind="vlm",
        model_types=("qwen3_vl",),
        model_class="Qwen3VLForConditionalGeneration",
        processor_class="Qwen3VLProcessor",
        format_prompt=chat_prompt,
        position_ids="internal",  # interleaved M-RoPE from input_ids + image grid + mask
        video_processor_optional=True,
    ),
    FamilyAdapter(
        name="internvl",
        kind="vlm",
        model_types=("internvl",),
        model_class="InternVLForConditionalGeneration",
        processor_class="InternVLProcessor",
        format_prompt=chat_prompt,
        video_processor_optional=True,
    ),
    FamilyAdapter(
        name="idefics3",
        kind="vlm",
        model_types=("idefics3",),
        model_class="Idefics3ForConditionalGeneration",
        processor_class="Idefics3Processor",
        format_prompt=chat_prompt,
        language_model_path="model.text_model",
        nest_images=True,
    ),
    FamilyAdapter(
        name="smolvlm",
        kind="vlm",
        model_types=("smolvlm",),
        model_class="SmolVLMForConditionalGeneration",
        processor_class="SmolVLMProcessor",
        format_prompt=rendered_chat_prompt,
        language_model_path="model.text_model",
        video_processor_optional=True,
        nest_images=True,
    ),
    FamilyAdapter(
        name="paligemma",
        kind="vlm",
        model_types=("paligemma",),
        model_class="PaliGemmaForConditionalGeneration",
        processor_class="PaliGemmaProcessor",
        format_prompt=paligemma_prompt,
        first_position=1,
    ),
)

LLAMA_MISTRAL_FAMILIES: tuple[FamilyAdapter, ...] = (
    FamilyAdapter(
        name="mllama",
        kind="vlm",
        model_types=("mllama",),
        model_class="MllamaForConditionalGeneration",
        processor_class="MllamaProcessor",
        format_prompt=mllama_prompt,
        nest_images=True,
        add_special_tokens=False,
    ),
    FamilyAdapter(
        name="mistral3",
        kind="vlm",
        model_types=("mistral3",),
        model_class="Mistral3ForConditionalGeneration",
        processor_class="PixtralProcessor",
        format_prompt=chat_prompt,
    ),
    FamilyAdapter(
        name="pixtral",
        kind="vlm",
        model_types=("llava",),
        vision_model_type="pixtral",
        model_class="LlavaForConditionalGeneration",
        processor_class="PixtralProcessor",
        format_prompt=chat_prompt,
    ),
)
REMOTE_CODE_FAMILIES: tuple[FamilyAdapter, ...] = (
    FamilyAdapter(
        name="phi3_v",
        kind="vlm",
        model_types=("phi3_v",),
        model_class="AutoModelForCausalLM",  # the class its config's auto_map names
        processor_class="AutoProcessor",
        format_prompt=phi3_v_prompt,
        language_model_path=None,
        position_ids="internal",  # its own code: let it number positions itself
    ),
)
"""Checkpoints that ship their own model code (``--trust-remote-code``)."""
RECENT_FAMILIES = (*RECENT_FAMILIES, *LLAMA_MISTRAL_FAMILIES, *REMOTE_CODE_FAMILIES)
"""Today's open families, each with its processor's chat template as the clean prompt."""
FAMILIES = (*FAMILIES, *RECENT_FAMILIES)

GENERIC_VLM = FamilyAdapter(
    name="generic",
    kind="vlm",
    model_types=(),
    model_class="AutoModelForImageTextToText",
    processor_class="AutoProcessor",
    format_prompt=chat_prompt,
    language_model_path=None,
    position_ids="internal",  # unknown layout: passing 2-D positions could break M-RoPE models
)

_BY_NAME = {adapter.name: adapter for adapter in (*FAMILIES, GENERIC_VLM)}
_BY_MODEL_TYPE = {
    model_type: adapter
    for adapter in FAMILIES
    if adapter.vision_model_type is None
    for model_type in adapter.model_types
}
_BY_MODEL_AND_VISION_TYPE = {
    (model_type, adapter.vision_model_type): adapter
    for adapter in FAMILIES
    if adapter.vision_model_type is not None
    for model_type in adapter.model_types
}


def adapter_by_name(name: str) -> FamilyAdapter:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(_BY_NAME)}") from None


def adapter_for_model_type(model_type: str) -> FamilyAdapter:
    """The adapter for a ``config.model_type``; unknown types fall back to the generic
    ``AutoModelForImageTextToText`` + chat-template adapter."""
    return _BY_MODEL_TYPE.get(model_type, GENERIC_VLM)


def adapter_for_config(config: Any) -> FamilyAdapter:
    """Detect the family of a loaded ``transformers`` config from its ``model_type`` (and its
    vision tower's, which tells Pixtral-12B from LLaVA)."""
    model_type = getattr(config, "model_type", None)
    if not model_type:
        raise ValueError(f"{type(config).__name__} has no model_type; cannot detect its family")
    vision_type = getattr(getattr(config, "vision_config", None), "model_type", None)
    by_vision = _BY_MODEL_AND_VISION_TYPE.get((model_type, vision_type))
    return by_vision or adapter_for_model_type(model_type)


def known_families() -> list[str]:
    return sorted(_BY_NAME)
