"""How each family wraps a bare question into its prompt, image placeholder included.

One function per format; the adapter table (``families.py``) names which family uses which.
Chat-template families render their processor's own template; the rest follow the formats of
their papers and model cards.
"""

from __future__ import annotations

from typing import Any

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def image_token(processor: Any, default: str = "<image>") -> str:
    token = getattr(processor, "image_token", None) or getattr(
        getattr(processor, "tokenizer", None), "image_token", None
    )
    return str(getattr(token, "content", token)) if token else default


def fill_template(template: str, image: str, question: str) -> str:
    """``template`` with the image placeholder and the question put in (in that order, so a
    question that happens to contain ``{image}`` stays as written)."""
    return template.replace("{image}", image).replace("{question}", question)


def chat_template_of(processor: Any) -> str | dict | None:
    """The processor's chat template, else its tokenizer's, else None."""
    template = getattr(processor, "chat_template", None)
    if template:
        return template
    return getattr(getattr(processor, "tokenizer", None), "chat_template", None)


def apply_image_chat_template(question: str, processor: Any) -> str:
    """One user turn holding an image and the question, followed by the assistant's cue."""
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
    tokenizer = getattr(processor, "tokenizer", None)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
    raise ValueError(
        f"{type(processor).__name__} has no chat template; this model family needs one to place "
        "the image in the prompt"
    )


def llava_prompt(question: str, processor: Any, config: Any) -> str:
    return f"USER: {image_token(processor)}\n{question} ASSISTANT:"


def llava_next_prompt(question: str, processor: Any, config: Any) -> str:
    if chat_template_of(processor):
        return apply_image_chat_template(question, processor)
    text_type = getattr(getattr(config, "text_config", None), "model_type", "")
    if text_type == "mistral":
        return f"[INST] {image_token(processor)}\n{question} [/INST]"
    return f"{VICUNA_SYSTEM} USER: {image_token(processor)}\n{question} ASSISTANT:"


def blip2_prompt(question: str, processor: Any, config: Any) -> str:
    return f"Question: {question} Answer:"


def instructblip_prompt(question: str, processor: Any, config: Any) -> str:
    return question


def rendered_chat_prompt(question: str, processor: Any, config: Any) -> str:
    """The processor's chat template rendered by its tokenizer: SmolVLM's processor-level
    ``apply_chat_template`` reads video settings, which an image-only processor lacks."""
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    return processor.tokenizer.apply_chat_template(
        conversation, chat_template=chat_template_of(processor), add_generation_prompt=True,
        tokenize=False,
    )  # fmt: skip


def paligemma_prompt(question: str, processor: Any, config: Any) -> str:
    """The image, then the task; the processor puts BOS after the image and "\\n" at the end."""
    return f"{image_token(processor)}{question}"


def phi3_v_prompt(question: str, processor: Any, config: Any) -> str:
    """Phi-3-Vision's model-card format: its chat template takes text content only, and its
    processor numbers images (``<|image_1|>``)."""
    return f"<|user|>\n<|image_1|>\n{question}<|end|>\n<|assistant|>\n"


def mllama_prompt(question: str, processor: Any, config: Any) -> str:
    """Llama 3.2 Vision: the instruct chat template; the base checkpoints have none and are
    prompted ``<|image|>question`` (the processor puts BOS after the leading image token)."""
    if chat_template_of(processor):
        return apply_image_chat_template(question, processor)
    return f"{image_token(processor, '<|image|>')}{question}"


def chat_prompt(question: str, processor: Any, config: Any) -> str:
    return apply_image_chat_template(question, processor)
