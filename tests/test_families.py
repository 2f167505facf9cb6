"""Today's open families on tiny random models: the attention patterns that are not plain causal
(Gemma 3's bidirectional image tokens and sliding window, PaliGemma's prefix LM, Llama 3.2
Vision's cross-attention tile mask), closed-world generation, and the hf: round trip through a
saved folder (Pixtral's processor also from its saved parts). Every family's exactness against one
full forward per class is in test_likelihood.py; generation, features and padding in
test_models.py; projector fine-tuning in test_finetune.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_likelihood import prompt_inputs
from vlmclf.data.types import Example
from vlmclf.methods import make_method
from vlmclf.methods.base import LoadedExample
from vlmclf.methods.likelihood.compat import cache_layers
from vlmclf.methods.likelihood.method import LikelihoodMethod
from vlmclf.methods.likelihood.reference import full_forward_log_probs
from vlmclf.methods.likelihood.targets import append_tokens
from vlmclf.models import load_model
from vlmclf.models.families import adapter_by_name
from vlmclf.models.hf import wrap_model
from vlmclf.models.random_models import random_spec, save_random_model
from vlmclf.spec import RunSpec

RECENT = [
    "llava_onevision", "gemma3", "qwen3_vl", "internvl", "idefics3", "smolvlm", "paligemma",
    "mllama", "mistral3", "pixtral",
]  # fmt: skip
NAMES = ["cat", "cat food", "catamaran", "tench", "golden retriever", "great white shark"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))


def likelihood(model, **fields) -> LikelihoodMethod:
    spec = RunSpec(model=model.name, dataset="mem", method="likelihood", **fields)
    return LikelihoodMethod(model, NAMES, spec, max_pass_tokens=256)


def worst_gap(model, method: LikelihoodMethod, image: Image.Image, inputs=None) -> float:
    """Largest per-token difference between the method's scores and one forward per class."""
    question = method.question_for(None)
    continuations = method.continuations_for(question, tuple(NAMES))
    batch = [LoadedExample(Example("e0", 0, "test", "mem:0", lambda: None), image)]
    got = method.predict(batch)[0].extra["token_logprobs"]
    inputs = inputs or prompt_inputs(model, method, image, question)  # lm-eval's boundary
    want = full_forward_log_probs(model.model, inputs, list(continuations.values()))
    return max(
        abs(a - b)
        for name, w in zip(continuations, want, strict=True)
        for a, b in zip(got[name], w, strict=True)
    )


def test_gemma3_short_sliding_window_falls_back_to_exact_replication(image):
    """Window 12 < prompt length: a tree mask would let names see past the window."""
    spec = random_spec("gemma3")
    spec.config.text_config.sliding_window = 12
    adapter = adapter_by_name("gemma3")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        raw = adapter.model_cls()(spec.config)
    model = wrap_model(raw, spec.processor, adapter, "random:gemma3-window12")
    method = likelihood(model)
    assert method.scorer.strategy == "tree" and method.scorer.sliding_window == 12
    question = method.question_for(None)
    prefix = method.scorer.prefill(dict(model.build_inputs([image], [question])))
    sequences = list(method.continuations_for(question, tuple(NAMES)).values())
    assert method.scorer.strategy_for(prefix, sequences) == "replicate"
    assert worst_gap(model, method, image) < TOLERANCE
    # the sliding layer's cache holds only the window: a tree mask over the prompt cannot apply
    sliding_layer = cache_layers(prefix.cache)[0]
    assert sliding_layer.keys.shape[-2] < prefix.length


def test_gemma3_default_window_keeps_the_tree(image):
    model = load_model("random:gemma3")
    method = likelihood(model)
    question = method.question_for(None)
    prefix = method.scorer.prefill(dict(model.build_inputs([image], [question])))
    sequences = list(method.continuations_for(question, tuple(NAMES)).values())
    assert method.scorer.strategy_for(prefix, sequences) == "tree"
    assert worst_gap(model, method, image) < TOLERANCE


def test_gemma3_image_tokens_attend_both_ways_and_the_scores_say_so(image):
    model = load_model("random:gemma3")
    method = likelihood(model)
    inputs = dict(model.build_inputs([image], [method.question_for(None)]))
    assert int(inputs["token_type_ids"].sum()) == 4  # the 4 image tokens
    first_image = int(inputs["token_type_ids"][0].nonzero()[0])
    with torch.no_grad():
        both_ways = model.model(**inputs, output_hidden_states=True).hidden_states[-1]
        plain = {k: v for k, v in inputs.items() if k != "token_type_ids"}
        causal = model.model(**plain, output_hidden_states=True).hidden_states[-1]
    # the first image token sees the later ones only when attention is bidirectional
    assert (both_ways[0, first_image] - causal[0, first_image]).abs().max() > 1e-3
    torch.testing.assert_close(both_ways[0, :first_image], causal[0, :first_image])
    assert worst_gap(model, method, image) < TOLERANCE  # against the bidirectional reference


def test_paligemma_names_are_scored_as_the_causal_answer_not_the_prefix(image):
    model = load_model("random:paligemma")
    method = likelihood(model)
    assert worst_gap(model, method, image) < TOLERANCE
    # a reference that puts the name in the bidirectional prefix (token type 0) disagrees
    question = method.question_for(None)
    inputs = dict(model.build_inputs([image], [question]))
    sequence = method.continuations_for(question, ("great white shark",))["great white shark"]
    extended = append_tokens(inputs, sequence)  # zero-extends token types: the prefix
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        logits = model.model(**extended).logits[0, length - 1 : length - 1 + len(sequence)]
    as_prefix = torch.log_softmax(logits.float(), -1)[torch.arange(len(sequence)), sequence]
    as_answer = torch.tensor(full_forward_log_probs(model.model, inputs, [sequence])[0])
    assert (as_prefix - as_answer).abs().max() > 1e-3


@pytest.mark.parametrize("family", RECENT)
def test_closed_world_generation_offers_k_names(family, image):
    model = load_model(f"random:{family}")
    spec = RunSpec(
        model=f"random:{family}", dataset="mem", method="generate", setting="closed", k=3,
        max_new_tokens=3,
    )  # fmt: skip
    method = make_method(model, NAMES, spec)
    batch = [LoadedExample(Example(f"e{i}", i, "test", f"mem:{i}", lambda: None), image)
             for i in range(2)]  # fmt: skip
    for item, prediction in zip(batch, method.predict(batch), strict=True):
        assert len(prediction.choices) == 3 and item.example.label in prediction.choices
        assert isinstance(prediction.text, str)


@pytest.mark.parametrize(
    "family", ["llava_onevision", "smolvlm", "gemma3", "paligemma", "mllama", "mistral3", "pixtral"]
)
def test_saved_recent_family_loads_back_through_hf(family, tmp_path, image):
    """Families with a video processor (OneVision, SmolVLM, ...) reload without torchvision,
    their settings (image tokens per tile) intact."""
    save_random_model(family, tmp_path / family, seed=0)
    reloaded = load_model(f"hf:{tmp_path / family}")
    original = load_model(f"random:{family}")
    assert reloaded.adapter.name == family
    questions = ["What type of object is in this photo?"]
    ours, theirs = (
        reloaded.build_inputs([image], questions),
        original.build_inputs([image], questions),
    )
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert reloaded.generate([image], questions, 4) == original.generate([image], questions, 4)


def test_remote_code_checkpoint_without_the_flag_says_which_flag(tmp_path):
    config = {
        "model_type": "phi3_v",
        "auto_map": {"AutoConfig": "configuration_phi3_v.Phi3VConfig"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match="ships its own model code .*--trust-remote-code"
    ) as caught:
        load_model(f"hf:{tmp_path}")
    assert "\n" not in str(caught.value)


def test_mllama_scored_names_read_only_the_image_tiles_their_prompt_reads(image):
    """Llama 3.2 Vision: scored tokens repeat the prompt's last cross-attention mask row. A square
    image fills one of two tiles; without the mask a name would also read the padding tile."""
    model = load_model("random:mllama")
    method = likelihood(model)
    question = method.question_for(None)
    square = Image.new("RGB", (32, 32), (200, 30, 30))
    inputs = prompt_inputs(model, method, square, question)
    assert inputs["cross_attention_mask"][0, -1].tolist() == [[1, 0]]  # tile 2 is padding
    assert worst_gap(model, method, square, inputs) < TOLERANCE
    # one batch of a two-tile and a one-tile image: each row keeps its own mask
    batch = [LoadedExample(Example(f"e{i}", 0, "test", f"mem:{i}", lambda: None), picture)
             for i, picture in enumerate((image, square))]  # fmt: skip
    together = method.predict(batch)
    for item, prediction in zip(batch, together, strict=True):
        alone = method.predict([item])[0]
        assert prediction.scores == pytest.approx(alone.scores, abs=TOLERANCE)
    sequences = list(method.continuations_for(question, tuple(NAMES)).values())
    want = full_forward_log_probs(model.model, inputs, sequences)
    prefix = method.scorer.prefill(inputs)
    prefix.last_token_inputs = {}  # what a scorer unaware of cross-attention masks would do
    unmasked = method.scorer.score(prefix, sequences)[0]
    gap = max(abs(a - b) for got, w in zip(unmasked, want, strict=True)
              for a, b in zip(got, w, strict=True))  # fmt: skip
    assert gap > 1e-3


def test_mllama_appended_names_get_the_mask_the_processor_gives_the_whole_text(image):
    """The reference's own extension of ``cross_attention_mask`` agrees with the processor run
    on prompt + name as one text: an independent check of what every scored token reads."""
    model = load_model("random:mllama")
    method = likelihood(model)
    question = method.question_for(None)
    prompt = model.format_prompt(question)
    name = "great white shark"
    sequence = method.continuations_for(question, (name,))[name]
    appended = append_tokens(dict(model.build_inputs([image], [question])), sequence)
    text = prompt + model.tokenizer.decode(list(sequence))
    whole = model.processor(images=[[image]], text=[text], add_special_tokens=False,
                            return_tensors="pt")  # fmt: skip
    assert torch.equal(whole["input_ids"], appended["input_ids"])
    assert torch.equal(whole["cross_attention_mask"], appended["cross_attention_mask"])


def test_mllama_text_depends_on_the_image_only_through_cross_attention(image):
    """The gates of the tiny model are open, so images change the answer's scores; the
    sequence itself holds one <|image|> token whatever the image's tiling."""
    model = load_model("random:mllama")
    method = likelihood(model)
    question = method.question_for(None)
    square = Image.new("RGB", (32, 32), (10, 200, 10))
    batch = model.build_inputs([image, square], [question, question])
    assert batch["aspect_ratio_mask"].sum(-1).flatten().tolist() == [2, 1]  # tiles in use
    assert torch.equal(batch["input_ids"][0], batch["input_ids"][1])
    assert int((batch["input_ids"][0] == model.model.config.image_token_id).sum()) == 1
    sequences = list(method.continuations_for(question, ("cat",)).values())
    scores = [
        full_forward_log_probs(
            model.model, prompt_inputs(model, method, picture, question), sequences
        )[0]
        for picture in (image, square)
    ]
    assert abs(scores[0][0] - scores[1][0]) > 1e-4


def test_pixtral_processor_loads_from_its_saved_parts(tmp_path, image, monkeypatch):
    """Where transformers cannot build Pixtral's processor whole (5.17 without torchvision), the
    saved image processor, tokenizer and settings give the same inputs."""
    from vlmclf.models.compat import processor_class

    save_random_model("mistral3", tmp_path / "m3", seed=0)
    original = load_model(f"hf:{tmp_path / 'm3'}")

    def refuse(*args, **kwargs):
        raise ImportError("PixtralImageProcessor needs torchvision")

    monkeypatch.setattr("transformers.AutoProcessor.from_pretrained", refuse)
    monkeypatch.setattr(processor_class("PixtralProcessor"), "from_pretrained", refuse)
    rebuilt = load_model(f"hf:{tmp_path / 'm3'}")
    assert rebuilt.processor.spatial_merge_size == 2 and rebuilt.processor.patch_size == 8
    questions = ["What type of object is in this photo?"]
    ours = rebuilt.build_inputs([image], questions)
    theirs = original.build_inputs([image], questions)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"])


def test_mllama_base_checkpoint_without_chat_template_gets_one_bos_after_the_image(image):
    """The base Llama 3.2 Vision ships no chat template: ``<|image|>question``, and the
    processor writes BOS after the image token (transformers' documented base-model prompt)."""
    model = load_model("random:mllama")
    model.processor.chat_template = None
    model.tokenizer.chat_template = None
    assert model.format_prompt("Q?") == "<|image|>Q?"
    ids = model.build_inputs([image], ["Q?"])["input_ids"][0].tolist()
    tokens = model.tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:2] == ["<|image|>", "<|begin_of_text|>"]
    assert tokens.count("<|begin_of_text|>") == 1
    assert model.generate([image], ["Q?"], 2)


def test_a_prompt_that_begins_with_bos_gets_no_second_one(image):
    """Chat templates that write BOS (Gemma 3's, Mistral's, Llama 3's) meet tokenizers that add
    it too; as in transformers' own processor chat path, the tokenizer's is then left out."""
    model = load_model("random:mistral3")  # its tokenizer writes <s> in front of every text
    model.prompt_template = "<s>[INST]{image}{question}[/INST]"
    ids = model.build_inputs([image], ["Q?"])["input_ids"][0].tolist()
    assert model.tokenizer.convert_ids_to_tokens(ids).count("<s>") == 1
    model.prompt_template = "[INST]{image}{question}[/INST]"  # without: the tokenizer's BOS
    ids = model.build_inputs([image], ["Q?"])["input_ids"][0].tolist()
    assert model.tokenizer.convert_ids_to_tokens(ids)[0] == "<s>"


@pytest.mark.parametrize("family", ["mllama", "mistral3", "pixtral"])
def test_eval_cli_scores_and_generates_on_the_llama_and_mistral_families(family, tmp_path):
    from tests.test_eval import common, eval_json, make_image_folder

    folder = make_image_folder(tmp_path / "images", per_class=1)
    store = tmp_path / "runs.sqlite"
    model = ["--model", f"random:{family}"]
    scored = eval_json(*model, "--method", "likelihood", *common(folder, store))
    closed = eval_json(*model, "--method", "generate", "--setting", "closed", "--k", "3",
                       "--max-new-tokens", "4", *common(folder, store))  # fmt: skip
    assert scored["n"] == closed["n"] == 4
    assert scored["n_failed"] == closed["n_failed"] == 0
