"""An offline byte-level BPE tokenizer for the tiny random models.

Real checkpoints ship tokenizers with 32k-150k entries; the random models need one that is small
(so their embedding tables stay tiny), trained without the network, deterministic, and shaped
like the real thing where it matters for scoring: class names split into several tokens and
names that begin alike share their first tokens (a token trie has branches). A BPE trained on
the shipped class-name lists with short merges gives exactly that.

The vocabulary is trained once per process (and cached on disk under ``~/.cache/vlmclf``);
each family then wraps it with its own special tokens, post-processor and chat template.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from vlmclf.cache import cache_root

VOCAB_SIZE = 1536
MAX_TOKEN_CHARS = 5  # short merges keep most class names multi-token, as under real BPEs
SPECIAL_TOKENS = (
    "<pad>",
    "<s>",
    "</s>",
    "<image>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|endoftext|>",
    "<|startoftext|>",
)
PROMPT_SENTENCES = (
    "What type of object is in this photo?",
    "Identify the object in this image.",
    "What is the main object depicted in this photograph?",
    "Choose one from the following options:",
    "Answer with the name of the object only.",
    "Question: Answer: USER: ASSISTANT: [INST] [/INST]",
    "system user assistant You are a helpful assistant.",
    "Let's think step by step. The answer is",
    "A, B, C, or D.",
)
CORPUS_FILES = (
    "caltech101.json",
    "fashion_mnist.json",
    "flowers102.json",
    "imagenet.json",
    "stanford_cars.json",
)
PHOTO_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "itap of a {}.", "a picture of a {}.")

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %} [/INST]"
    "{% elif message['role'] == 'assistant' %} "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{{ message['content'][0]['text'] }}{% endif %}</s>"
    "{% endif %}{% endfor %}"
)


def _turns_template(user: str, assistant: str, end: str, image: str, start: str = "") -> str:
    """A chat template of ``{start}{user}<content>{end}`` turns ending in the assistant cue,
    the image item written as ``image``: the shape of most VLM chat templates."""
    return (
        start + "{% for message in messages %}"
        "{% if message['role'] == 'user' %}" + user + "{% else %}" + assistant + "{% endif %}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}" + image + ""
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}" + end + "{% endfor %}"
        "{% if add_generation_prompt %}" + assistant + "{% endif %}"
    )


# Shapes of the real templates (LLaVA-OneVision and InternVL are Qwen2 chats, Gemma 3 opens with
# BOS and names the assistant "model", Idefics3/SmolVLM and Pixtral write no system turn).
ONEVISION_CHAT_TEMPLATE = _turns_template(
    "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n", "<image>\n"
)
INTERNVL_CHAT_TEMPLATE = _turns_template(
    "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n", "<IMG_CONTEXT>\n"
)
GEMMA_CHAT_TEMPLATE = _turns_template(
    "<start_of_turn>user\n",
    "<start_of_turn>model\n",
    "<end_of_turn>\n",
    "<start_of_image>",
    start="{{ bos_token }}",
)
IDEFICS_CHAT_TEMPLATE = _turns_template(
    "<|im_start|>User:", "Assistant:", "<end_of_utterance>\n", "<image>", start=""
)
PIXTRAL_CHAT_TEMPLATE = _turns_template("[INST]", "", "[/INST]", "[IMG]")
# Llama 3.2 Vision: headers around each role, "<|image|>" before the text, BOS from the template.
MLLAMA_CHAT_TEMPLATE = _turns_template(
    "<|start_header_id|>user<|end_header_id|>\n\n",
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "<|eot_id|>",
    "<|image|>",
    start="{{ bos_token }}",
)


@dataclass(frozen=True)
class TokenizerProfile:
    """How one family's real tokenizer frames text: special tokens, BOS/EOS, padding side."""

    bos: str | None
    eos: str
    pad: str
    prefix: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()
    padding_side: str = "left"
    model_max_length: int = 8192
    chat_template: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    added: tuple[str, ...] = ()  # family-only special tokens, appended after the shared vocab


IMAGE = {"image_token": "<image>"}
# Qwen2-VL and Qwen3-VL name their vision tokens alike.
QWEN_VISION_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
PROFILES: dict[str, TokenizerProfile] = {
    # Llama / Vicuna / Mistral: "<s>" in front of every text.
    "llama": TokenizerProfile(bos="<s>", eos="</s>", pad="<pad>", prefix=("<s>",), extra=IMAGE),
    "mistral": TokenizerProfile(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        prefix=("<s>",),
        chat_template=MISTRAL_CHAT_TEMPLATE,
        extra=IMAGE,
    ),
    # OPT (BLIP-2) also starts every text with a BOS token. BLIP processors register the
    # <image> token themselves, so these tokenizers do not name one.
    "opt": TokenizerProfile(bos="<s>", eos="</s>", pad="<pad>", prefix=("<s>",)),
    "vicuna_blip": TokenizerProfile(bos="<s>", eos="</s>", pad="<pad>", prefix=("<s>",)),
    # Qwen2: no BOS, chat turns end in <|im_end|>.
    "qwen": TokenizerProfile(
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=QWEN_CHAT_TEMPLATE,
        extra=QWEN_VISION_TOKENS,
    ),
    "onevision": TokenizerProfile(
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=ONEVISION_CHAT_TEMPLATE,
        extra=IMAGE,
        added=("<video>",),
    ),
    "qwen3": TokenizerProfile(
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=QWEN_CHAT_TEMPLATE,
        extra=QWEN_VISION_TOKENS,
    ),
    "internvl": TokenizerProfile(
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=INTERNVL_CHAT_TEMPLATE,
        extra={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        added=("<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
    ),
    "gemma": TokenizerProfile(
        bos="<s>",
        eos="<end_of_turn>",
        pad="<pad>",
        chat_template=GEMMA_CHAT_TEMPLATE,
        extra={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        added=(
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ),
    ),
    "idefics": TokenizerProfile(
        bos="<s>",
        eos="<end_of_utterance>",
        pad="<pad>",
        prefix=("<s>",),
        chat_template=IDEFICS_CHAT_TEMPLATE,
        extra={
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
        added=(
            "<fake_token_around_image>",
            "<global-img>",
            "<end_of_utterance>",
            *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
        ),
    ),
    "pixtral": TokenizerProfile(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        prefix=("<s>",),
        chat_template=PIXTRAL_CHAT_TEMPLATE,
        extra={"image_token": "[IMG]"},
        added=("[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"),
    ),
    # Llama 3 writes <|begin_of_text|> in front of every text, as its chat template does too:
    # the mllama adapter calls the processor without special tokens (one BOS, as in training).
    "mllama": TokenizerProfile(
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
        prefix=("<|begin_of_text|>",),
        chat_template=MLLAMA_CHAT_TEMPLATE,
        extra={"image_token": "<|image|>"},
        added=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
               "<|image|>", "<|python_tag|>", "<|finetune_right_pad_id|>"),  # fmt: skip
    ),
    # PaliGemma's processor writes BOS itself, after the image tokens.
    "paligemma": TokenizerProfile(bos="<s>", eos="</s>", pad="<pad>", extra=IMAGE),
    # CLIP pools the text at its first end-of-text token.
    "clip": TokenizerProfile(
        bos="<|startoftext|>",
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        prefix=("<|startoftext|>",),
        suffix=("<|endoftext|>",),
        padding_side="right",
        model_max_length=77,
    ),
    # SigLIP pools the last position, so texts end in </s> and are padded to max length.
    "siglip": TokenizerProfile(
        bos=None,
        eos="</s>",
        pad="</s>",
        suffix=("</s>",),
        padding_side="right",
        model_max_length=64,
    ),
    # The Q-Former's BERT-style framing ([CLS] text [SEP]) for InstructBLIP instructions.
    "qformer": TokenizerProfile(
        bos="<s>", eos="</s>", pad="<pad>", prefix=("<s>",), suffix=("</s>",), padding_side="right"
    ),
}


def training_corpus() -> list[str]:
    """The fixed corpus: the shipped class names, alone and in photo templates, plus prompts.

    The files are named, not globbed, so a class list added later does not change the
    vocabulary (and with it every random model's outputs).
    """
    folder = resources.files("vlmclf.data").joinpath("classnames")
    names: list[str] = []
    for file_name in CORPUS_FILES:
        names.extend(json.loads(folder.joinpath(file_name).read_text(encoding="utf-8")))
    corpus = list(names)
    for template in PHOTO_TEMPLATES:
        corpus.extend(template.format(name) for name in names)
    corpus.extend(list(PROMPT_SENTENCES) * 20)
    return corpus


def default_cache_dir() -> Path:
    """``$VLMCLF_CACHE_DIR/tokenizers`` or ``~/.cache/vlmclf/tokenizers``."""
    return cache_root() / "tokenizers"


def _cache_file(cache_dir: Path, corpus: list[str]) -> Path:
    key = json.dumps(
        [corpus, VOCAB_SIZE, MAX_TOKEN_CHARS, SPECIAL_TOKENS, tokenizers.__version__]
    ).encode()
    return cache_dir / f"tiny-bpe-{hashlib.sha256(key).hexdigest()[:16]}.json"


def train_bpe(corpus: list[str]) -> Tokenizer:
    """Train the byte-level BPE on ``corpus``; the same corpus always gives the same merges."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=MAX_TOKEN_CHARS,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def load_or_train_bpe(cache_dir: Path | None) -> str:
    """The trained BPE as JSON, read from ``cache_dir`` when there, else trained and stored.

    The file name hashes the corpus, settings and tokenizers version, so a change to any of
    them trains afresh instead of reading a stale vocabulary.
    """
    corpus = training_corpus()
    path = _cache_file(cache_dir, corpus) if cache_dir is not None else None
    if path is not None and path.is_file():
        return path.read_text(encoding="utf-8")
    text = train_bpe(corpus).to_str()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(text, encoding="utf-8")
            partial.replace(path)  # atomic: concurrent processes never read half a file
        except OSError:
            pass  # an unwritable cache only costs a retrain (~0.1 s) next time
    return text


@functools.cache
def base_bpe_json() -> str:
    """The shared tiny BPE, trained once per process (and cached on disk)."""
    return load_or_train_bpe(default_cache_dir())


def _post_processor(backend: Tokenizer, profile: TokenizerProfile) -> processors.PostProcessor:
    pieces = [*profile.prefix, "$A", *profile.suffix]
    pair = [*profile.prefix, "$A", *profile.suffix, *profile.prefix, "$B:1", *profile.suffix]
    used = sorted(set(profile.prefix) | set(profile.suffix))
    return processors.TemplateProcessing(
        single=" ".join(pieces),
        pair=" ".join(pair),
        special_tokens=[(token, backend.token_to_id(token)) for token in used],
    )


def build_tokenizer(profile_name: str) -> PreTrainedTokenizerFast:
    """A fresh transformers tokenizer over the shared tiny BPE, framed like ``profile_name``."""
    profile = PROFILES[profile_name]
    backend = Tokenizer.from_str(base_bpe_json())
    if profile.added:
        backend.add_special_tokens(list(profile.added))
    backend.post_processor = _post_processor(backend, profile)
    specials = {"eos_token": profile.eos, "pad_token": profile.pad}
    if profile.bos is not None:
        specials["bos_token"] = profile.bos
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side=profile.padding_side,
        model_max_length=profile.model_max_length,
        chat_template=profile.chat_template,
        clean_up_tokenization_spaces=False,
        **specials,
        **profile.extra,
    )
