"""vlmclf finetune: answer-only loss, trainable parts, LoRA merge, the guard, data mixing, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import typer
from fixtures_data import COLOURS, write_noisy_colour_folder
from PIL import Image
from typer.testing import CliRunner

from vlmclf.analysis.finetune.data import (
    batches_forever,
    classification_items,
    mix_in,
    read_llava_conversations,
)
from vlmclf.analysis.finetune.log import DivergenceGuard, LossLog, lr_factor, warmup_steps
from vlmclf.analysis.finetune.model import HFTrainable, LoraSettings, make_trainable
from vlmclf.analysis.finetune.run import (
    FinetuneRequest,
    FinetuneRuntime,
    Trainer,
    TrainingDiverged,
    run_finetune,
)
from vlmclf.commands.finetune import EXIT_DIVERGED, finetune_command
from vlmclf.data import load_dataset
from vlmclf.models import load_model
from vlmclf.store import RunStore

QUESTION = "What type of object is in this photo?"


def write_colour_folder(root: Path, per_class: int, seed: int) -> Path:
    return write_noisy_colour_folder(root, per_class, seed, noise=30)


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("colours")
    return {"train": write_colour_folder(base / "train", 10, seed=1),
            "test": write_colour_folder(base / "test", 5, seed=2)}  # fmt: skip


def request_for(colours: dict[str, Path], **overrides) -> FinetuneRequest:
    settings = dict(
        model="random:llava", dataset="imagefolder", data_root=str(colours["test"]),
        train_data_root=str(colours["train"]), train_limit=4, batch_size=4, steps=6,
        lr_projector=1e-2, lr_lora=1e-2, warmup_ratio=0.0, lora_dropout=0.0,
    )  # fmt: skip
    return FinetuneRequest(**{**settings, **overrides})


def _images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (32 + 8 * i, 32), tuple(COLOURS.values())[i % 3]) for i in range(n)]


@pytest.mark.parametrize(
    "family",
    ["llava", "llava_next", "qwen2_vl", "llava_onevision", "gemma3", "qwen3_vl", "internvl",
     "idefics3", "smolvlm", "paligemma", "mllama", "mistral3", "pixtral"],
)  # fmt: skip
def test_loss_is_on_the_answer_only_and_matches_the_model_s_own(family):
    wrapper = load_model(f"random:{family}")
    trainable = make_trainable(wrapper, "projector")
    answers = [trainable.answer_ids(QUESTION, name) for name in ("red", "dark green")]
    assert all(ids[-1] == trainable.eos_id for ids in answers)
    decoded = wrapper.tokenizer.decode(answers[1][:-1]).strip()
    assert decoded == "dark green"
    images, questions = _images(2), [QUESTION, QUESTION]
    with torch.no_grad():
        summed, n_tokens = trainable.batch_loss(images, questions, answers)
    assert n_tokens == sum(len(a) for a in answers)
    # the same sequence through the model's own loss (labels = answer tokens, -100 elsewhere)
    inputs = dict(wrapper.build_inputs(images, questions))
    length = max(len(a) for a in answers)
    tail = torch.tensor([a + [wrapper.tokenizer.pad_token_id] * (length - len(a)) for a in answers])
    tail_mask = torch.tensor([[1] * len(a) + [0] * (length - len(a)) for a in answers])
    prompt_labels = torch.full_like(inputs["input_ids"], -100)
    labels = torch.cat([prompt_labels, tail.masked_fill(tail_mask == 0, -100)], 1)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], tail], 1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], tail_mask], 1)
    if "cross_attention_mask" in inputs:  # Mllama: answer tokens read the tiles the prompt read
        crossed = inputs["cross_attention_mask"]
        tail_cross = crossed[:, -1:].repeat(1, length, 1, 1)
        inputs["cross_attention_mask"] = torch.cat([crossed, tail_cross], 1)
    if "mm_token_type_ids" in inputs:
        types = inputs["mm_token_type_ids"]
        inputs["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(tail)], 1)
    if "token_type_ids" in inputs:  # Gemma 3: 0 is text; PaliGemma: 1 is the causal answer
        answer_type = 1 if family == "paligemma" else 0
        types = inputs["token_type_ids"]
        inputs["token_type_ids"] = torch.cat([types, torch.full_like(tail, answer_type)], 1)
    with torch.no_grad():
        reference = wrapper.model(**wrapper.forward_inputs(inputs), labels=labels).loss
    assert float(summed / n_tokens) == pytest.approx(float(reference), rel=1e-4)
    trainable_names = {n for n, p in wrapper.model.named_parameters() if p.requires_grad}
    assert trainable_names and all(
        any(part in n for part in ("projector", "merger", "connector")) for n in trainable_names
    )


def test_projector_only_lowers_the_loss_and_leaves_the_language_model_alone(colours, tmp_path):
    fresh = load_model("random:llava").model.state_dict()
    request = request_for(colours)
    runtime = FinetuneRuntime(out_dir=tmp_path / "ckpt", store_path=tmp_path / "runs.sqlite")
    outcome = run_finetune(request, runtime)
    losses = [float(row["loss"]) for row in LossLogRows(outcome.files["log"])]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert outcome.checkpoint == f"hf:{tmp_path / 'ckpt'}"
    tuned = load_model(outcome.checkpoint)
    state = tuned.model.state_dict()
    changed = {k for k in fresh if not torch.equal(fresh[k], state[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)
    answers = tuned.generate(_images(2), [QUESTION, QUESTION], max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert outcome.files["figure"].read_bytes()[:4] == b"\x89PNG"
    with RunStore(tmp_path / "runs.sqlite") as store:
        record = store.get_analysis(outcome.analysis_id)
    assert record.kind == "finetune" and record.result["status"] == "done"
    assert record.result["checkpoint"] == outcome.checkpoint


def LossLogRows(path: Path) -> list[dict[str, str]]:  # noqa: N802 - reads like a table
    import csv

    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_lora_is_merged_into_a_checkpoint_that_reproduces_the_trained_model(colours, tmp_path):
    wrapper = load_model("random:llava")
    settings = LoraSettings(rank=4, alpha=8, dropout=0.0)
    trainable = make_trainable(wrapper, "projector+lora", settings)
    assert isinstance(trainable, HFTrainable)
    named = trainable.peft_model.named_parameters()
    lora_names = [n for n, p in named if p.requires_grad and "lora_" in n]
    assert lora_names and all("language_model" in n for n in lora_names)  # not the vision tower
    data = load_dataset("imagefolder", str(colours["train"]))
    items = classification_items(list(data.examples)[:3], data.class_names)
    request = request_for(colours, train="projector+lora", batch_size=3, steps=4)
    runtime = FinetuneRuntime(out_dir=tmp_path, micro_batch=2)
    Trainer(trainable, request, runtime).run(items, LossLog(tmp_path / "log.csv"), progress=False)
    lora_b = [p for n, p in trainable.peft_model.named_parameters() if "lora_B" in n]
    assert any(float(p.detach().abs().sum()) > 0 for p in lora_b)  # LoRA moved away from identity
    batch = wrapper.build_inputs(_images(2), [QUESTION, QUESTION])
    with torch.no_grad():
        trained = wrapper.model(**wrapper.forward_inputs(batch)).logits
    spec = trainable.save(tmp_path / "merged")
    reloaded = load_model(spec)
    with torch.no_grad():
        again = reloaded.build_inputs(_images(2), [QUESTION, QUESTION])
        merged = reloaded.model(**reloaded.forward_inputs(again)).logits
    assert torch.allclose(trained, merged, atol=1e-4)
    assert not any("lora" in k for k in reloaded.model.state_dict())


def test_nan_loss_stops_training_with_a_report_and_no_checkpoint(colours, tmp_path, monkeypatch):
    original = HFTrainable.batch_loss
    calls = {"n": 0}

    def poisoned(self, images, questions, answers):
        calls["n"] += 1
        summed, n = original(self, images, questions, answers)
        return (summed * math.nan if calls["n"] >= 3 else summed), n

    monkeypatch.setattr(HFTrainable, "batch_loss", poisoned)
    runtime = FinetuneRuntime(out_dir=tmp_path / "run", store_path=tmp_path / "runs.sqlite")
    with pytest.raises(TrainingDiverged) as stopped:
        run_finetune(request_for(colours), runtime)
    report = stopped.value.report
    assert report.step == 3 and "NaN" in report.reason
    message = str(stopped.value)
    assert "step 3" in message and "lower the learning rates" in message
    saved = json.loads((tmp_path / "run" / "divergence.json").read_text())
    assert saved["step"] == 3 and saved["reason"] == "the loss is NaN"
    assert not (tmp_path / "run" / "config.json").exists()
    assert (tmp_path / "run" / "loss_curve.png").is_file()
    with RunStore(tmp_path / "runs.sqlite") as store:
        (record,) = store.list_analyses("finetune")
    assert record.result["status"] == "diverged" and record.result["steps"] == 3


def test_guard_spike_rules():
    guard = DivergenceGuard(warmup=2, spike_factor=5.0, window=50, min_history=3)
    lrs = {"projector": 1e-3}
    for step, loss in enumerate([9.0, 8.0, 1.0, 1.1, 0.9], start=1):
        assert guard.check_loss(step, loss, lrs) is None
    assert guard.check_loss(6, 4.9, lrs) is None  # below 5 x median
    report = guard.check_loss(7, 30.0, lrs)
    assert report is not None and report.reason.startswith("loss spike") and report.step == 7
    assert "running median" in report.message()
    grads = DivergenceGuard(warmup=0, grad_spike_factor=100.0, min_history=3)
    for step in range(1, 5):
        assert grads.check_grad(step, 1.0, 2.0, lrs) is None
    assert "gradient-norm spike" in grads.check_grad(5, 1.0, 1e6, lrs).reason
    assert "gradient norm is inf" in grads.check_grad(6, 1.0, math.inf, lrs).reason
    off = DivergenceGuard(warmup=0, spike_factor=0, min_history=1)
    assert off.check_loss(1, 1.0, lrs) is None and off.check_loss(2, 1e9, lrs) is None
    assert off.check_loss(3, math.inf, lrs).reason == "the loss is infinite"


def test_schedule_warms_up_then_decays():
    total = 100
    warmup = warmup_steps(total, 0.03)
    assert warmup == 3
    ramp = [lr_factor(s, total, warmup, "cosine") for s in range(3)]
    assert ramp == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lr_factor(3, total, warmup, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, total, warmup, "cosine") < 0.01
    assert lr_factor(51, total, warmup, "linear") == pytest.approx(0.5, abs=0.01)
    order = batches_forever(5, 2, seed=0)
    batches = [next(order) for _ in range(5)]  # 10 indices: exactly two epochs of 5
    assert all(len(batch) == 2 for batch in batches)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat[:5]) == sorted(flat[5:]) == list(range(5))


def write_llava_json(folder: Path) -> Path:
    (folder / "imgs").mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(folder / "imgs" / "a.png")
    conversations = [
        {"id": "a1", "image": "imgs/a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this?"},
            {"from": "gpt", "value": "It is red."},
            {"from": "human", "value": "Is it bright?"},
            {"from": "gpt", "value": "Yes, quite bright."}]},
        {"id": "t1", "conversations": [
            {"from": "human", "value": "Tell me a joke."}, {"from": "gpt", "value": "No."}]},
        {"id": "m1", "image": "imgs/missing.png", "conversations": [
            {"from": "human", "value": "What is shown?\n<image>"},
            {"from": "gpt", "value": "Nothing."}]},
    ]  # fmt: skip
    path = folder / "llava_instruct.json"
    path.write_text(json.dumps(conversations))
    return path


def test_llava_instruction_data_parses_and_mixes(tmp_path, colours):
    path = write_llava_json(tmp_path)
    items, stats = read_llava_conversations(path, image_folder=tmp_path)
    assert [(i.id, i.question, i.answer) for i in items] == [
        ("a1#0", "What colour is this?", "It is red."),
        ("a1#1", "Is it bright?", "Yes, quite bright."),
        ("m1#0", "What is shown?", "Nothing."),
    ]
    assert stats.conversations == 3 and stats.skipped_text_only == 1
    assert items[0].loader().size == (40, 40)
    data = load_dataset("imagefolder", str(colours["train"]))
    base = classification_items(list(data.examples)[:6], data.class_names, "A photo of a {}.")
    first_name = data.class_names[data.examples[0].label]
    assert base[0].answer == f"A photo of a {first_name}." and base[0].source == "caption"
    mixed = mix_in(base, items, ratio=0.25, seed=0)
    assert len(mixed) == 8 and sum(i.source == "instruction" for i in mixed) == 2
    bad = tmp_path / "bad.json"
    turns = [{"from": "robot", "value": "hi"}]
    bad.write_text(json.dumps([{"id": "x", "image": "a.png", "conversations": turns}]))
    with pytest.raises(ValueError, match=r"bad.json entry 0: turn 0 has unknown 'from' 'robot'"):
        read_llava_conversations(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1,\n "conversations": ]')
    with pytest.raises(ValueError, match=r"broken.json line 2: invalid JSON"):
        read_llava_conversations(broken)


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(finetune_command)
    return app


def test_finetune_command_closes_the_gap_with_mixed_data(colours, tmp_path):
    mix = write_llava_json(tmp_path / "instruct")
    args = ["--model", "random:llava", "--dataset", "imagefolder",
            "--data-root", str(colours["test"]), "--train-data-root", str(colours["train"]),
            "--train", "projector+lora",
            "--train-limit", "30", "--step-batch-size", "6", "--batch-size", "3", "--steps", "40",
            "--lr-projector", "3e-3", "--lr-lora", "3e-3", "--warmup-ratio", "0.1",
            "--lora-dropout", "0", "--mix-instructions", str(mix),
            "--image-folder", str(tmp_path / "instruct"),
            "--mix-ratio", "0.1", "--limit", "15", "--store", str(tmp_path / "runs.sqlite"),
            "--out", str(tmp_path / "ckpt"), "--no-progress", "--json"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["data"]["classification"] == 30 and payload["data"]["instruction"] == 3
    assert payload["skipped_images"] >= 1  # the missing instruction image, skipped not fatal
    assert payload["final_loss"] < payload["first_loss"]
    assert payload["after"]["accuracy"] > payload["before"]["accuracy"] + 0.2
    assert payload["after"]["model"] == f"hf:{tmp_path / 'ckpt'}"
    assert Path(payload["files"]["log"]).read_text().startswith("step,loss,lr_projector,lr_lora")


def test_command_exits_3_with_a_report_when_the_loss_diverges(colours, tmp_path, monkeypatch):
    def infinite(self, images, questions, answers):
        return torch.tensor(math.inf, requires_grad=True), 3

    monkeypatch.setattr(HFTrainable, "batch_loss", infinite)
    args = ["--model", "random:llava", "--dataset", "imagefolder",
            "--data-root", str(colours["test"]), "--train-data-root", str(colours["train"]),
            "--train-limit", "4", "--step-batch-size", "4",
            "--steps", "3", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "o"),
            "--no-progress", "--output-path", str(tmp_path / "files")]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == EXIT_DIVERGED
    assert "training stopped at step 1: the loss is infinite" in result.output
    assert "no checkpoint was written" in result.output and "divergence.json" in result.output
    [written] = (tmp_path / "files").iterdir()  # a diverged fine-tune still writes its file
    document = json.loads(written.read_text())
    assert document["status"] == "diverged" and document["summary"]["divergence"]
    assert written.name == f"results_{document['analysis_id']}.json"


def test_api_and_encoder_models_are_refused():
    clip = load_model("random:clip")
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        make_trainable(clip, "projector")
    with pytest.raises(ValueError, match="--train must be"):
        make_trainable(clip, "everything")  # type: ignore[arg-type]


def tiny_organism():
    """The real OrganismVLM class and image encoder with a tiny random Llama as its language
    model (the shipped SmolLM2 takes ~20 s to load; the slow test below uses it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlmclf.models.random_tokenizer import build_tokenizer
    from vlmclf.organism.vlm import OrganismVLM, Projector

    tokenizer = build_tokenizer("qwen")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    projector = Projector(out_dim=64, hidden_dim=64)
    return OrganismVLM(LlamaForCausalLM(config).eval(), tokenizer, projector)


def test_organism_projector_training_masks_the_prompt_and_saves_its_weights_folder(tmp_path):
    from vlmclf.organism.load import load_state, read_config
    from vlmclf.organism.vlm import Projector

    organism = tiny_organism()
    trainable = make_trainable(organism, "projector")
    answers = [trainable.answer_ids(QUESTION, "red"), trainable.answer_ids(QUESTION, "dark green")]
    assert organism.tokenizer.decode(answers[1][:-1]) == "dark green"
    images = _images(2)
    with torch.no_grad():
        summed, n_tokens = trainable.batch_loss(images, [QUESTION] * 2, answers)
        embeds, mask = organism.prompt_embeddings(images, [QUESTION] * 2)
        length = max(len(a) for a in answers)
        tail = torch.tensor([a + [0] * (length - len(a)) for a in answers])
        tail_mask = torch.tensor([[1] * len(a) + [0] * (length - len(a)) for a in answers])
        labels = torch.cat([torch.full_like(mask, -100), tail.masked_fill(tail_mask == 0, -100)], 1)
        full = torch.cat([embeds, organism.lm.get_input_embeddings()(tail)], 1)
        reference = organism.forward(full, torch.cat([mask, tail_mask], 1), labels=labels).loss
    assert n_tokens == len(answers[0]) + len(answers[1])
    assert float(summed / n_tokens) == pytest.approx(float(reference), rel=1e-4)
    with pytest.raises(ValueError, match="projector only"):
        make_trainable(tiny_organism(), "projector+lora")
    # a few steps on one repeated batch: the loss goes down, only the projector moves
    lm_before = {k: v.clone() for k, v in organism.lm.state_dict().items()}
    from vlmclf.analysis.finetune.data import TrainItem

    items = [TrainItem(str(i), "classification", QUESTION, name, lambda i=i: _images(3)[i])
             for i, name in enumerate(COLOURS)]  # fmt: skip
    request = FinetuneRequest(model="organism:vlm", dataset="x", batch_size=3, steps=8,
                              lr_projector=3e-3, warmup_ratio=0.0)  # fmt: skip
    log = LossLog(tmp_path / "log.csv")
    Trainer(trainable, request, FinetuneRuntime(out_dir=tmp_path)).run(items, log, progress=False)
    assert log.losses()[-1] < log.losses()[0]
    assert all(torch.equal(v, organism.lm.state_dict()[k]) for k, v in lm_before.items())
    assert trainable.save(tmp_path / "weights") == f"organism:vlm@{tmp_path / 'weights'}"
    config = read_config(tmp_path / "weights", "vlm")
    restored = load_state(tmp_path / "weights", "vlm", Projector(**{
        "in_dim": config["projector"]["in_dim"], "hidden_dim": config["projector"]["hidden_dim"],
        "out_dim": config["projector"]["out_dim"]}))  # fmt: skip
    for key, value in organism.projector.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value)


@pytest.mark.slow
def test_organism_finetune_checkpoint_loads_with_its_language_model(tmp_path):
    from vlmclf.models import known_prefixes
    from vlmclf.organism.load import default_weights_dir, load_organism

    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not installed")
    if "organism" not in known_prefixes() or not default_weights_dir("vlm").is_dir():
        pytest.skip("the organism (loader and shipped weights) is not there yet")
    request = FinetuneRequest(model="organism:vlm", dataset="fashion_mnist", train_limit=16,
                              batch_size=8, steps=3, lr_projector=1e-4)  # fmt: skip
    outcome = run_finetune(request, FinetuneRuntime(out_dir=tmp_path / "w",
                                                    store_path=tmp_path / "s.sqlite"))  # fmt: skip
    assert outcome.checkpoint == f"organism:vlm@{tmp_path / 'w'}"
    tuned = load_organism("organism:vlm", weights_dir=str(tmp_path / "w"))
    assert len(tuned.generate(_images(1), [QUESTION], max_new_tokens=3)) == 1


def test_qformer_training_moves_the_qformer_and_projection_but_not_the_vision_tower(
    colours, tmp_path
):
    wrapper = load_model("random:blip2")
    fresh = {k: v.clone() for k, v in wrapper.model.state_dict().items()}
    trainable = make_trainable(wrapper, "projector", trainable="qformer")
    names = {n for n, p in wrapper.model.named_parameters() if p.requires_grad}
    assert any("qformer" in n for n in names) and any("query_tokens" in n for n in names)
    assert any("language_projection" in n for n in names)
    assert not any("vision_model" in n or "language_model" in n for n in names)
    data = load_dataset("imagefolder", str(colours["train"]))
    items = classification_items(list(data.examples)[:4], data.class_names)
    request = request_for(colours, batch_size=4, steps=2, lr_projector=1e-2)
    Trainer(trainable, request, FinetuneRuntime(out_dir=tmp_path)).run(
        items, LossLog(tmp_path / "log.csv"), progress=False
    )
    state = wrapper.model.state_dict()
    changed = {k for k in fresh if not torch.equal(fresh[k], state[k])}
    assert any(k.startswith("qformer.") for k in changed) and "query_tokens" in changed
    assert any(k.startswith("language_projection.") for k in changed)
    assert not any(k.startswith(("vision_model.", "language_model.")) for k in changed)
    projector_only = make_trainable(load_model("random:blip2"), "projector")
    groups = projector_only.parameter_groups(1e-3, 1e-3)
    assert sum(p.numel() for g in groups for p in g["params"]) < sum(
        p.numel() for g in trainable.parameter_groups(1e-3, 1e-3) for p in g["params"]
    )


def test_qformer_training_is_refused_for_models_without_one():
    with pytest.raises(ValueError, match="has no Q-Former"):
        make_trainable(load_model("random:llava"), "projector", trainable="qformer")


def test_lora_on_all_linear_layers_covers_the_mlp_and_stays_inside_the_language_model():
    from vlmclf.analysis.finetune.model import lora_settings

    wrapper = load_model("random:llava")
    lm_path = wrapper.adapter.language_model_path
    linear = {n for n, m in wrapper.model.named_modules()
              if isinstance(m, torch.nn.Linear) and n.startswith(f"{lm_path}.")}  # fmt: skip
    settings = lora_settings(4, 8, 0.0, "all-linear")
    trainable = make_trainable(wrapper, "projector+lora", settings)
    adapted = {
        n.removeprefix("base_model.model.").removesuffix(".lora_A.default.weight")
        for n, _ in trainable.peft_model.named_parameters() if n.endswith("lora_A.default.weight")
    }  # fmt: skip
    assert adapted == linear and any("mlp" in n for n in adapted)
    attention = make_trainable(load_model("random:llava"), "projector+lora",
                               lora_settings(4, 8, 0.0, "attention"))  # fmt: skip
    suffixes = {n.rsplit(".", 3)[0].rsplit(".", 1)[-1]
                for n, _ in attention.peft_model.named_parameters() if "lora_A" in n}  # fmt: skip
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj"}
    with pytest.raises(ValueError, match="--lora-targets"):
        lora_settings(4, 8, 0.0, "mlp")  # type: ignore[arg-type]



def test_finetune_output_path_writes_its_results_and_the_before_and_after_runs(
    colours, tmp_path, torch_threads_restored
):
    out, store = tmp_path / "files", tmp_path / "runs.sqlite"
    args = ["--model", "random:llava", "--dataset", "imagefolder",
            "--data-root", str(colours["test"]), "--train-data-root", str(colours["train"]),
            "--train-limit", "4", "--batch-size", "4", "--steps", "2", "--limit", "3",
            "--store", str(store), "--out", str(tmp_path / "ckpt"), "--no-progress", "--json",
            "--threads", "2", "--output-path", str(out), "--log-samples"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    analysis_id = payload["analysis_id"]
    run_ids = [payload["before"]["run_id"], payload["after"]["run_id"]]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"results_{analysis_id}.json", *(f"results_{r}.json" for r in run_ids),
                            *(f"samples_{r}.jsonl" for r in run_ids)])  # fmt: skip
    results = json.loads((out / f"results_{analysis_id}.json").read_text())
    assert results["kind"] == "finetune" and results["status"] == "done"
    assert results["summary"]["final_loss"] == payload["final_loss"]
    assert results["identity"]["spec"]["steps"] == 2 and results["protocol"]["name"] == "clean"
    assert results["threads"] == 2 and results["versions"]["transformers"]
    with RunStore(store, read_only=True) as runs:
        for run_id, when in zip(run_ids, ("before", "after"), strict=True):
            document = json.loads((out / f"results_{run_id}.json").read_text())
            assert document["summary"]["accuracy"] == payload[when]["accuracy"]
            assert document["threads"] == 2 == runs.get_run(run_id).threads
            samples = (out / f"samples_{run_id}.jsonl").read_text().splitlines()
            assert len(samples) == 3 and all(json.loads(s)["label_name"] for s in samples)


def test_finetune_log_samples_without_limit_is_refused_before_training(colours, tmp_path):
    args = ["--model", "random:llava", "--dataset", "imagefolder",
            "--data-root", str(colours["test"]), "--store", str(tmp_path / "s.sqlite"),
            "--out", str(tmp_path / "o"), "--output-path", str(tmp_path / "f"),
            "--log-samples"]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2 and "give --limit N" in result.output
    assert not (tmp_path / "s.sqlite").exists() and not (tmp_path / "o").exists()
