"""The less common ways into the scorer: a prompt given as embeddings (the organism's path, on a
tiny LlamaForCausalLM stand-in whose images take different numbers of tokens), an answer prefix,
and the real-size LLaVA-1.5 architecture builder of the bench, shrunk."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from vlmclf.data.types import Example
from vlmclf.methods.base import LoadedExample
from vlmclf.methods.likelihood.method import LikelihoodMethod
from vlmclf.methods.likelihood.reference import (
    full_forward_log_probs,
    full_forward_log_probs_from_embeds,
)
from vlmclf.models import load_model
from vlmclf.models.random_tokenizer import build_tokenizer
from vlmclf.spec import RunSpec

NAMES = ["cat", "cat food", "catamaran", "tench", "tench", "golden retriever", "golden eagle", "a"]
TOLERANCE = 1e-4


class EmbeddingPromptVLM:
    """Stands in for the organism: visual tokens (one per 16 pixels of width, so images differ
    in length) followed by the chat-formatted question, left-padded, fed to a causal LM."""

    name = "stand-in"

    def __init__(self) -> None:
        self.tokenizer = build_tokenizer("qwen")
        config = LlamaConfig(
            vocab_size=len(self.tokenizer), hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        )  # fmt: skip
        torch.manual_seed(0)
        self.lm = LlamaForCausalLM(config).eval()
        self.projection = torch.randn(3, 64)

    def format_prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": question}]
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def _text(self, question: str) -> torch.Tensor:
        ids = self.tokenizer(self.format_prompt(question), return_tensors="pt")["input_ids"][0]
        return self.lm.get_input_embeddings()(ids)

    def _visual(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.tensor(np.asarray(image.convert("RGB")), dtype=torch.float32) / 255
        columns = pixels.mean(0).split(16, dim=0)  # (width/16) chunks of (16, 3)
        return torch.stack([c.mean(0) @ self.projection for c in columns])

    def _padded(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(r.shape[0] for r in rows)
        embeds = torch.zeros(len(rows), longest, 64)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, row in enumerate(rows):
            embeds[i, longest - row.shape[0] :] = row
            mask[i, longest - row.shape[0] :] = 1
        return embeds, mask

    @torch.no_grad()
    def prompt_embeddings(self, images, questions):
        return self._padded(
            [
                torch.cat([self._visual(im), self._text(q)])
                for im, q in zip(images, questions, strict=True)
            ]
        )

    @torch.no_grad()
    def text_prompt_embeddings(self, questions):
        return self._padded([self._text(q) for q in questions])


def batch_of(images: list[Image.Image]) -> list[LoadedExample]:
    return [
        LoadedExample(Example(f"e{i}", i, "test", "mem", lambda: None), im)
        for i, im in enumerate(images)
    ]


def test_prompt_given_as_embeddings_scores_exactly_with_guidance():
    model = EmbeddingPromptVLM()
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (20, w, 3), dtype=np.uint8)) for w in (32, 64, 32)
    ]
    spec = RunSpec(model="organism:vlm", dataset="mem", method="likelihood", options={"cfg": 2.0})
    method = LikelihoodMethod(model, NAMES, spec, max_pass_tokens=8)
    assert method.scorer.strategy == "tree"
    predictions = method.predict(batch_of(images))
    question = method.question_for(None)
    continuations = method.continuations_for(question, tuple(dict.fromkeys(NAMES)))
    # The chat prompt's final newline moves into every name (lm-evaluation-harness's rule).
    newline = model.tokenizer("\n", add_special_tokens=False)["input_ids"]
    cat = model.tokenizer("cat", add_special_tokens=False)["input_ids"]
    assert continuations["cat"] == tuple(newline + cat)
    trim = method.prompt_for(question).trim
    assert trim == len(newline)
    sequences = [continuations[n] for n in continuations]
    embeds, mask = model.prompt_embeddings(images, [question] * len(images))
    for i, prediction in enumerate(predictions):
        real = embeds[i][mask[i].bool()][None][:, :-trim]
        want = full_forward_log_probs_from_embeds(model.lm, real, sequences)
        for name, values in zip(continuations, want, strict=True):
            got = prediction.extra["token_logprobs"][name]
            assert max(abs(a - b) for a, b in zip(got, values, strict=True)) < TOLERANCE
    text, _ = model.text_prompt_embeddings([question])
    prior = full_forward_log_probs_from_embeds(model.lm, text[:, :-trim], sequences)
    for name, values in zip(continuations, prior, strict=True):
        got = predictions[0].extra["image_free"][name]
        assert max(abs(a - b) for a, b in zip(got, values, strict=True)) < TOLERANCE


def test_answer_prefix_is_scored_as_part_of_the_prompt():
    model = load_model("random:llava", dtype="float32", seed=0)
    prefix = "The photo features a"
    spec = RunSpec(
        model="random:llava", dataset="mem", method="likelihood", options={"answer_prefix": prefix}
    )
    method = LikelihoodMethod(model, NAMES, spec)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    prediction = method.predict(batch_of([image]))[0]
    question = method.question_for(None)
    # The reference tokenizes prompt + prefix + name as one text through the real processor.
    text = model.format_prompt(question) + " " + prefix
    inputs = {
        k: v for k, v in model.processor(images=[image], text=[text], return_tensors="pt").items()
    }
    for name in dict.fromkeys(NAMES):
        joint = model.processor(images=[image], text=[text + " " + name], return_tensors="pt")[
            "input_ids"
        ][0]
        tokens = tuple(joint[inputs["input_ids"].shape[1] :].tolist())
        (want,) = full_forward_log_probs(model.model, inputs, [tokens])
        got = prediction.extra["token_logprobs"][name]
        assert (
            len(got) == len(want)
            and max(abs(a - b) for a, b in zip(got, want, strict=True)) < TOLERANCE
        )


def load_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "scoring.py"
    spec = importlib.util.spec_from_file_location("bench_scoring", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_llava_arch_builder_runs_the_same_code_path_shrunk():
    bench = load_bench()
    model = bench.build_llava_arch("cpu", "float32", tiny=True)
    assert model.model.config.text_config.vocab_size == 32064
    spec = RunSpec(model="arch", dataset="mem", method="likelihood")
    method = LikelihoodMethod(model, NAMES, spec)
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    prediction = method.predict(batch_of([image]))[0]
    question = method.question_for(None)
    inputs = dict(model.build_inputs([image], [question]))
    assert int((inputs["input_ids"] == model.model.config.image_token_id).sum()) == 4  # (28/14)^2
    continuations = method.continuations_for(question, tuple(dict.fromkeys(NAMES)))
    want = full_forward_log_probs(model.model, inputs, list(continuations.values()))
    for name, values in zip(continuations, want, strict=True):
        got = prediction.extra["token_logprobs"][name]
        assert max(abs(a - b) for a, b in zip(got, values, strict=True)) < TOLERANCE
