"""`--protocol paper` equals the paper's published code (yuhui-zh15/VLMClassifier), item by item.

The paper's scripts, its eval notebook and LLaVA's ``vicuna_v1``/``preprocess_v1`` were run on the
same saved tiny LLaVA-1.5, images, prompts and strings these tests build, and their outputs are
recorded in tests/fixtures/paper_outputs.json by scripts/record_paper_outputs.py (which names the
source commits; none of their code lives in this repository). Each test runs vlmclf on those
inputs and asserts it gives the recorded outputs; where ``clean`` keeps its own behaviour, that it
still does.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from paper_inputs import (
    CLASSES,
    FINETUNE_QUESTION,
    POOLING_QUESTIONS,
    files_fingerprint,
    pooling_images,
    weights_fingerprint,
    write_manifest,
    write_wikiqa,
)
from PIL import Image
from typer.testing import CliRunner

from vlmclf.cli import app

FIXTURE = Path(__file__).parent / "fixtures" / "paper_outputs.json"
RERECORD = "re-record with scripts/record_paper_outputs.py (see its docstring)"


@cache
def recorded() -> dict:
    """What the paper's and LLaVA's code output on these tests' inputs."""
    return json.loads(FIXTURE.read_text())


def assert_recorded_inputs(model: torch.nn.Module | None = None, images: list[Path] = (),
                           expected_images: str | None = None) -> None:  # fmt: skip
    """A mismatch against the fixture must say the inputs changed, not look like a protocol bug."""
    if model is not None:
        got = weights_fingerprint(model)
        assert got == recorded()["model"]["weights_sha256"], (
            f"the tiny LLaVA is not the one the fixture was recorded on ({got}): {RERECORD}"
        )
    if images:
        got = files_fingerprint(list(images))
        want = expected_images or recorded()["images_sha256"]
        assert got == want, f"the test images are not the recorded ones ({got}): {RERECORD}"


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vlmclf.models.random_models import save_random_model

    return save_random_model("llava", tmp_path_factory.mktemp("llava") / "model")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("images"))


def paper_model(llava_dir: Path):
    """The model as the paper loads it (``AutoProcessor``, ``LlavaForConditionalGeneration``),
    float32 here (the bf16 loading is another item)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(llava_dir)
    model = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=torch.float32).eval()
    return processor, model


def run_cli(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def manifest_images(manifest: Path) -> list[Path]:
    return sorted(manifest.parent.glob("*.png"))


# ---------------------------------------------------------------- item 2: probe features


def test_paper_probe_extracts_the_paper_codes_features(llava_dir, manifest, tmp_path):
    """feature_analysis/extract_feature.py's features (last position, mean over all positions)
    of the 30 images, recorded from the script, are what ``probe --protocol paper`` extracts."""
    from vlmclf.analysis.probe.features import load_feature_file

    assert_recorded_inputs(paper_model(llava_dir)[1], manifest_images(manifest))
    common = ["probe", "--model", f"hf:{llava_dir}", "--dataset", str(manifest),
              "--train-split", "test", "--dtype", "float32", "--epochs", "1",
              "--store", str(tmp_path / "runs.sqlite"), "--cache-dir", str(tmp_path / "cache"),
              "--batch-size", "4"]  # fmt: skip
    paper = run_cli(*common, "--protocol", "paper", "--out", str(tmp_path / "paper"))
    clean = run_cli(*common, "--protocol", "clean", "--out", str(tmp_path / "clean"))
    assert paper["prompt_template"] == "USER: {image}\n{question}\nASSISTANT:"
    assert paper["positions"] == "all" and clean["positions"] == "real"
    assert clean["prompt_template"] is None

    ours = load_feature_file(Path(paper["cache_files"][1]))
    theirs = recorded()["features"]["probe"]
    assert sorted(ours.ids) == sorted(theirs)
    for pooling in ("last_token", "mean"):
        expected = torch.tensor([theirs[example_id][pooling] for example_id in ours.ids])
        torch.testing.assert_close(ours.features[pooling], expected, rtol=0, atol=1e-6)
    # clean keeps the family's own prompt ("...photo? ASSISTANT:"): other features
    other = load_feature_file(Path(clean["cache_files"][1]))
    assert (other.features["last_token"] - ours.features["last_token"]).abs().max() > 1e-2
    report = (tmp_path / "paper" / "probe.md").read_text()
    assert "mean over every position (pads included where a batch pads)" in report


def test_paper_pooling_counts_the_pads_of_a_padded_batch(llava_dir):
    """Questions of different lengths pad the batch: the paper's mean (recorded from
    extract_feature.py on one batch of these three) counts the pads, and its forward numbers
    positions from the first pad; clean's mean does not."""
    from vlmclf.models.families import adapter_by_name
    from vlmclf.models.hf import HFVisionLanguageModel

    processor, model = paper_model(llava_dir)
    assert_recorded_inputs(model)
    ours = HFVisionLanguageModel(model, processor, adapter_by_name("llava"), "tiny")
    ours.prompt_template = "USER: {image}\n{question}\nASSISTANT:"
    images = pooling_images()
    padded = recorded()["features"]["padded"]
    questions = POOLING_QUESTIONS
    assert padded["questions"] == questions
    got = ours.hidden_features(images, questions, positions="all")
    torch.testing.assert_close(got.last_token, torch.tensor(padded["last_token"]), rtol=0,
                               atol=1e-6)  # fmt: skip
    torch.testing.assert_close(got.mean, torch.tensor(padded["mean"]), rtol=0, atol=1e-6)
    real = ours.hidden_features(images, questions, positions="real")
    assert (real.mean - got.mean).abs().max() > 1e-3  # the pads moved the paper's mean
    alone = ours.hidden_features(images[1:2], questions[1:2], positions="real")
    torch.testing.assert_close(real.mean[1:2], alone.mean, rtol=0, atol=1e-5)


# ------------------------------------------------- items 3 and 5: how an answer is read


def export_rows(store: Path, run_id: str, out: Path) -> list[dict]:
    args = ["export", run_id, "--store", str(store), "--out-file", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_paper_generation_reads_the_answer_after_the_last_marker(llava_dir, manifest, tmp_path):
    """The paper's ``main()`` decodes the whole output and keeps the text after the last
    ``ASSISTANT:``: with its chain-of-thought prompt, which ends inside the answer, that text
    begins with the prompt's own words (the cue), which the new tokens alone do not. Recorded
    from main_results/main.py --chain_of_thought True, batch 8, 6 new tokens."""
    main = recorded()["main"]
    assert_recorded_inputs(paper_model(llava_dir)[1], manifest_images(manifest))
    template = "USER: {image}\n{question}\nASSISTANT: Let's think step by step."
    tokens = str(main["cot_max_new_tokens"])
    runs = {}
    for protocol in ("paper", "clean"):
        runs[protocol] = run_cli(
            "eval", "--model", f"hf:{llava_dir}", "--dataset", str(manifest), "--limit", "8",
            "--method", "generate", "--protocol", protocol, "--dtype", "float32",
            "--max-new-tokens", tokens, "--prompt-template", template, "--batch-size", "8",
            "--store", str(tmp_path / "runs.sqlite"),
        )  # fmt: skip
    assert runs["paper"]["spec"]["options"] == {"answer_marker": "ASSISTANT:"}
    assert "answer_marker" not in runs["clean"]["spec"].get("options", {})
    paper = export_rows(tmp_path / "runs.sqlite", runs["paper"]["run_id"], tmp_path / "p.jsonl")
    clean = export_rows(tmp_path / "runs.sqlite", runs["clean"]["run_id"], tmp_path / "c.jsonl")
    expected = [main["cot_preds"][row["example_id"]] for row in paper]
    assert len(paper) == 8 and [row["text"] for row in paper] == expected
    assert all(text.startswith("Let's think step by step.") for text in expected)
    assert not any(row["text"].startswith("Let's think step by step.") for row in clean)
    truths = [CLASSES[row["label"]].lower() for row in paper]
    hits = [truth in text.lower() for truth, text in zip(truths, expected, strict=True)]
    assert [row["hit"] for row in paper] == hits


def test_paper_wikiqa_parses_the_text_the_papers_code_parses(llava_dir, tmp_path):
    """imagewikiqa/main.py keeps the text after the last ``ASSISTANT:``, which begins with the
    CoT cue; its eval notebook parses that. vlmclf stores and parses the same text (answers and
    letters recorded from the script and the notebook; ``None`` where the notebook guessed)."""
    from vlmclf.store import RunStore

    wikiqa = recorded()["wikiqa"]
    questions = write_wikiqa(tmp_path, len(wikiqa["preds"]))
    items = [json.loads(line) for line in questions.read_text().splitlines()]
    assert_recorded_inputs(paper_model(llava_dir)[1], [tmp_path / item["image"] for item in items],
                           wikiqa["images"])  # fmt: skip
    out = run_cli(
        "wikiqa", "--model", f"hf:{llava_dir}", "--wikiqa-images", str(tmp_path), "--questions",
        str(questions), "--protocol", "paper", "--dtype", "float32", "--max-new-tokens",
        str(wikiqa["max_new_tokens"]), "--batch-size", "4", "--store",
        str(tmp_path / "runs.sqlite"), "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert out["spec"]["options"]["answer_marker"] == "ASSISTANT:"
    options = out["spec"]["options"]
    assert (out["spec"]["cot"], options["parser"], options["unparsed"]) == (
        True, "mmmu", "random-letter")  # fmt: skip
    with RunStore(tmp_path / "runs.sqlite", read_only=True) as store:
        stored = store.predictions(out["run_id"])
    assert [p.text for p in stored] == wikiqa["preds"]
    assert all(text.startswith("Let's think step by step.") for text in wikiqa["preds"])
    assert [None if p.pred is None else "ABCD"[p.pred] for p in stored] == wikiqa["letters"]


def test_paper_wikiqa_parses_the_cue_with_the_answer(llava_dir, tmp_path):
    """A prompt that ends inside an answer (the paper's prompt with " Trendelenburg position"
    appended; one new token): the notebook read question 1 as C only because the cue in front
    makes the text longer than five words. vlmclf parses the same whole text, cue included."""
    from vlmclf.analysis.wikiqa.run import run_wikiqa, wikiqa_spec
    from vlmclf.run.loading import ModelOptions
    from vlmclf.store import RunStore

    case = recorded()["wikiqa"]["answer_start"]
    questions = write_wikiqa(tmp_path, len(case["preds"]))
    template = "USER: {image}\n{question}\nASSISTANT: Let's think step by step." + case["text"]
    spec = wikiqa_spec(
        f"hf:{llava_dir}", questions=questions, cot=True, max_new_tokens=case["max_new_tokens"],
        unparsed="random-letter", protocol="paper", prompt_template=template, parser="mmmu",
        answer_marker="ASSISTANT:",
    )  # the CLI's paper settings (checked above), with the template no option sets
    out = run_wikiqa(spec, tmp_path, tmp_path / "runs.sqlite", tmp_path / "r",
                     questions=questions, batch_size=4, progress=False,
                     model_options=ModelOptions(device="cpu", dtype="float32"))  # fmt: skip
    with RunStore(tmp_path / "runs.sqlite", read_only=True) as store:
        stored = store.predictions(out["run_id"])
    assert [p.text for p in stored] == case["preds"]
    assert case["letters"][0] == "C"
    assert [None if p.pred is None else "ABCD"[p.pred] for p in stored] == case["letters"]


# answers a model may write after the cue: the paper parses "Let's think step by step. " + it
CUE_CASES = [
    "Trendelenburg position", ".B,", "C", "(A) Fowler's position", "Flat position.", "B or C",
    "Upright position, so B.", "I would say the flat one", "(D)", "A,",
]


@pytest.mark.parametrize("answer", CUE_CASES)
def test_the_cue_changes_what_the_papers_parser_reads_and_we_read_what_it_reads(answer):
    """The cue in front changes what the MMMU rule reads (the issue's two examples below);
    vlmclf parses the paper's text, cue included, so it reads what the notebook read (its
    letters for both texts recorded from the notebook's own parser)."""
    from vlmclf.analysis.wikiqa.parse import parse_choice_mmmu

    options = {"A": "Fowler's position", "B": "Upright position", "C": "Trendelenburg position",
               "D": "Flat position"}  # fmt: skip
    wikiqa = recorded()["wikiqa"]
    paper = wikiqa["cue_letters"][answer]
    assert parse_choice_mmmu(f"Let's think step by step. {answer}", options) == paper
    assert parse_choice_mmmu(answer, options) == wikiqa["bare_letters"][answer]
    if answer == "Trendelenburg position":  # option texts count only past five words
        assert (paper, wikiqa["bare_letters"][answer]) == ("C", None)
    if answer == ".B,":  # the cue keeps the leading "." from being stripped
        assert (paper, wikiqa["bare_letters"][answer]) == (None, "B")


# ------------------------------------------------ item 4: the fine-tuning conversation

VICUNA_V1 = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions. USER: {image}\n"
    "{question} ASSISTANT:"
)


def test_paper_finetune_trains_on_the_vicuna_v1_tokens_llava_trains_on(llava_dir):
    """The items' token ids and loss mask equal LLaVA's ``preprocess_v1`` of the paper's
    conversation ``...USER: <image>\\nWhat type of object is in the photo? ASSISTANT: {label}</s>``
    (recorded from LLaVA's train.py with this tokenizer; the image's tokens stand as one
    placeholder, as LLaVA's own code writes them)."""
    from vlmclf.analysis.finetune.model import make_trainable
    from vlmclf.models.families import adapter_by_name
    from vlmclf.models.hf import HFVisionLanguageModel
    from vlmclf.paper.finetune_settings import resolve_finetune_options

    llava = recorded()["llava"]
    chosen = resolve_finetune_options("paper", f"hf:{llava_dir}", {"match": "contain"}, set())
    assert chosen["prompt_template"] == VICUNA_V1 and chosen["question"] == FINETUNE_QUESTION
    assert chosen["eval_max_new_tokens"] == 1024 and chosen["match"] == "exact"
    for label, conversation in llava["vicuna_v1_training_prompts"].items():
        prompt = VICUNA_V1.replace("{image}", "<image>").replace("{question}", FINETUNE_QUESTION)
        assert conversation == f"{prompt} {label}</s>"
    processor, model = paper_model(llava_dir)
    assert_recorded_inputs(model)
    wrapper = HFVisionLanguageModel(model, processor, adapter_by_name("llava"), "tiny")
    wrapper.prompt_template = chosen["prompt_template"]
    trainable = make_trainable(wrapper, "projector")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    placeholder, ignore = llava["image_token_index"], llava["ignore_index"]
    assert list(llava["preprocess_v1"]) == ["Dress", "Ankle boot", "T-shirt/top"]
    for label, theirs in llava["preprocess_v1"].items():
        answer = trainable.answer_ids(FINETUNE_QUESTION, label)
        prompt = wrapper.build_inputs([Image.new("RGB", (28, 28))], [FINETUNE_QUESTION])
        ids = [placeholder if t == image_id else t for t in prompt["input_ids"][0].tolist()]
        ids = [t for i, t in enumerate(ids)
               if t != placeholder or i == 0 or ids[i - 1] != placeholder]  # fmt: skip
        assert ids + answer == theirs["input_ids"]
        assert [ignore] * len(ids) + answer == theirs["labels"]


def test_paper_finetune_evaluates_as_model_vqa_does(llava_dir, manifest, tmp_path):
    """``finetune --protocol paper``: the paper's settings unless given, and the before/after
    runs asked in vicuna_v1 (LLaVA's prompt, recorded), greedy up to 1024 new tokens, the new
    tokens read, exact match."""
    from vlmclf.store import RunStore

    store = tmp_path / "runs.sqlite"
    out = run_cli(
        "finetune", "--model", f"hf:{llava_dir}", "--dataset", str(manifest), "--train-split",
        "test", "--eval-split", "test", "--protocol", "paper", "--steps", "1", "--step-batch-size",
        "2", "--train-limit", "2", "--limit", "2", "--dtype", "float32", "--store",
        str(store), "--out", str(tmp_path / "ft"),
    )  # fmt: skip
    with RunStore(store, read_only=True) as runs:
        (analysis,) = runs.list_analyses("finetune")
        after = runs.get_run(out["after"]["run_id"])
        predictions = runs.predictions(out["after"]["run_id"])
    spec = analysis.spec
    assert (spec["protocol"], spec["match"], spec["lora_rank"], spec["epochs"]) == (
        "paper", "exact", 128, 50)  # fmt: skip
    assert spec["prompt_template"] == VICUNA_V1 and spec["question"] == FINETUNE_QUESTION
    assert after.spec["prompt_template"] == VICUNA_V1 and after.spec["max_new_tokens"] == 1024
    assert after.spec["prompt"] == FINETUNE_QUESTION and after.spec["match"] == "exact"
    prompt = recorded()["llava"]["vicuna_v1_question_prompt"]
    processor, model = paper_model(tmp_path / "ft")
    for prediction in predictions:
        inputs = processor(text=[prompt], images=[Image.open(manifest.parent /
                           prediction.example_id)], return_tensors="pt")  # fmt: skip
        with torch.inference_mode():
            output = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=1024)
        new = output[:, inputs["input_ids"].shape[1] :]
        text = processor.tokenizer.batch_decode(new, skip_special_tokens=True)[0].strip()
        assert prediction.text == text
        assert prediction.hit == (CLASSES[prediction.label].lower() == text.lower())


# ------------------------------------------------ item 6: the offered closed-world labels


def closed_run(manifest: Path, store: Path, protocol: str, *extra: str) -> dict:
    return run_cli(
        "eval", "--model", "random:llava", "--dataset", str(manifest), "--split", "test",
        "--method", "generate", "--setting", "closed", "--protocol", protocol, "--dtype",
        "float32", "--max-new-tokens", "1", "--store", str(store), *extra,
    )  # fmt: skip


def offered_questions(store: Path, run_id: str, class_names: list[str]) -> dict[str, str]:
    """Each stored example's closed-world question, rebuilt from its stored offered labels."""
    from vlmclf.methods.prompts import build_question
    from vlmclf.store import RunStore

    with RunStore(store, read_only=True) as runs:
        rows = runs.predictions(run_id)
    return {p.example_id: build_question("base", [class_names[i] for i in p.choices])
            for p in rows}  # fmt: skip


@pytest.mark.parametrize("k", ["4", None])
def test_paper_protocol_offers_the_papers_global_stream_image_by_image(manifest, tmp_path, k):
    """main_results/main.py: the split shuffled with seed 1234, then each image's labels from
    the same ``random`` stream, in order. vlmclf offers the question main.py asked each image
    (recorded for K=4 and K=10), also when it runs a subset first and extends it later (the
    stream is drawn by position)."""
    assert_recorded_inputs(images=manifest_images(manifest))
    store = tmp_path / "runs.sqlite"
    k_args = ("--k", k) if k else ()
    expected = recorded()["main"]["closed_questions"][k or str(len(CLASSES))]
    first = closed_run(manifest, store, "paper", *k_args, "--limit", "9")
    subset = offered_questions(store, first["run_id"], sorted(CLASSES))
    assert len(subset) == 9 and subset == {key: expected[key] for key in subset}
    whole = closed_run(manifest, store, "paper", *k_args)  # extends the same run
    assert first["run_id"] == whole["run_id"]
    assert whole["spec"]["options"]["offer"] == "paper_stream"
    ours = offered_questions(store, whole["run_id"], sorted(CLASSES))
    assert ours == expected  # 30 of 30


def copy_with_absolute_paths(manifest: Path, folder: Path) -> Path:
    """The manifest's images copied under ``folder/images``, listed by absolute path from a
    manifest kept elsewhere (``folder/lists``), as a user on another machine would have it."""
    import shutil

    (folder / "lists").mkdir(parents=True)
    lines = []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        target = folder / "images" / "test" / row["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(manifest.parent / row["image"], target)
        lines.append(json.dumps({**row, "image": str(target)}))
    path = folder / "lists" / "fm.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_clean_offers_the_same_labels_to_a_copied_dataset(manifest, tmp_path):
    """Clean seeds each example from a location-independent key (here the path below the
    images' common folder), so two copies in different places are offered the same labels;
    the new rule is in the identity of runs whose keys are not their ids."""
    from vlmclf.data import load_dataset
    from vlmclf.data.choices import sample_choices
    from vlmclf.methods.prompts import build_question
    from vlmclf.store import RunStore

    store = tmp_path / "runs.sqlite"
    copies = [copy_with_absolute_paths(manifest, tmp_path / name) for name in ("alice", "bob")]
    runs = [closed_run(path, store, "clean", "--k", "4") for path in copies]
    offered = [offered_questions(store, run["run_id"], sorted(CLASSES)) for run in runs]
    assert len(offered[0]) == 30 and list(offered[0]) != list(offered[1])  # other ids
    assert list(offered[0].values()) == list(offered[1].values())  # the same labels
    data = load_dataset(str(copies[0]), split="test")
    assert {e.seed_key for e in data.examples} == {f"{i:02d}.png" for i in range(30)}
    names = sorted(CLASSES)
    for example in data.examples:  # drawn from the key, not from the absolute path
        by_key = sample_choices(example.label, names, 4, "fixed", 0, example.seed_key)
        assert offered[0][example.id] == build_question("base", [names[i] for i in by_key])
    # a relative manifest's ids are its keys: its runs keep the identity they had
    relative = closed_run(manifest, store, "clean", "--k", "4")
    with RunStore(store, read_only=True) as stored:
        identities = [stored.get_run(run["run_id"]).identity for run in (*runs, relative)]
    assert all("choice_keys" in identity for identity in identities[:2])
    assert "choice_keys" not in identities[2]
