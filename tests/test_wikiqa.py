"""ImageWikiQA: reader, letter parsing, evaluation (generate, likelihood) and question building."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from api_servers import FakeApiServer
from output_files import read_output_files
from PIL import Image
from typer.testing import CliRunner

from vlmclf.analysis.wikiqa.build import (
    build_questions,
    parse_generated,
    read_wiki,
    with_class_name,
)
from vlmclf.analysis.wikiqa.parse import parse_choice
from vlmclf.analysis.wikiqa.run import (
    WikiQALikelihoodMethod,
    evaluate_wikiqa,
    run_wikiqa,
    wikiqa_spec,
)
from vlmclf.commands.wikiqa import wikiqa_app
from vlmclf.data.imagewikiqa import LETTERS, load_imagewikiqa, read_questions
from vlmclf.data.types import BadExampleError
from vlmclf.run.loading import ModelOptions
from vlmclf.store import RunStore

OPTIONS = {"A": "Fowler's position", "B": "Upright position", "C": "Trendelenburg position",
           "D": "Flat position"}  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", "B"), ("b", "B"), ("b)", "B"), ("(C)", "C"), ("[D]", "D"), ("A.", "A"),
        ("Answer: B", "B"), ("answer: c", "C"), ("The answer is D.", "D"), ("**A**", "A"),
        ("Final answer: **B**", "B"), ("The correct option is (C) Trendelenburg position", "C"),
        ("B. Upright position", "B"), ("Option D", "D"), ("I would say C", "C"),
        ("Trendelenburg position", "C"), ("the patient lies in the trendelenburg position.", "C"),
        ("The answer is a flat position", "D"),  # "a" is the article, the text names D
        ("A) Fowler's B) Upright", None),  # lists two options, says neither
        ("The answer is B, not A", "B"),  # two letters: the explicit "answer is" form wins
        ("C or D", None), ("A dog lying down", None), ("position", None), ("", None),
        ("I cannot tell from the image.", None),
    ],
)  # fmt: skip
def test_parse_choice_reads_many_answer_formats(answer: str, expected: str | None) -> None:
    assert parse_choice(answer, OPTIONS) == expected


def test_shipped_questions_parse_into_stem_and_four_options() -> None:
    questions = read_questions()
    assert len(questions) == 2000
    assert len({q.example_id for q in questions}) == 2000
    first = questions[0]
    assert first.answer == "C" and first.options["C"] == "Trendelenburg position"
    assert first.stem.startswith("Which position") and "A." not in first.stem
    assert all(tuple(q.options) == LETTERS for q in questions)


def test_malformed_question_line_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    good = {"image": "x.JPEG", "text": "Q?\nA. a\nB. b\nC. c\nD. d", "label": "A"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "label": "E"}) + "\n")
    with pytest.raises(ValueError, match=r"q\.jsonl:2: field 'label'"):
        read_questions(path)
    path.write_text(json.dumps({**good, "text": "Q?\nA. a\nB. b"}) + "\n")
    with pytest.raises(ValueError, match=r"q\.jsonl:1: field 'text'"):
        read_questions(path)


def _question(image: str, stem: str, options: list[str], label: str) -> dict:
    lines = [f"{letter}. {option}" for letter, option in zip(LETTERS, options, strict=True)]
    text = "\n".join([stem, *lines, "Choose A, B, C, or D."])
    return {"image": image, "text": text, "label": label, "wiki": "w", "classname": "c"}


@pytest.fixture
def tiny_wikiqa(tmp_path: Path) -> tuple[Path, Path]:
    """Four questions: two images flat under images/, one in ImageNet's val/<wnid>/ layout, one
    missing; the same image carries two questions."""
    root = tmp_path / "imagenet"
    (root / "images").mkdir(parents=True)
    (root / "val" / "n01440764").mkdir(parents=True)
    Image.new("RGB", (24, 24), (200, 30, 30)).save(root / "images" / "v1.JPEG", format="JPEG")
    Image.new("RGB", (24, 24), (30, 200, 30)).save(root / "v2.JPEG", format="JPEG")
    nested = root / "val" / "n01440764" / "v3.JPEG"
    Image.new("RGB", (24, 24), (30, 30, 200)).save(nested, format="JPEG")
    rows = [
        _question("images/v1.JPEG", "What does this object eat?", ["Fish", "Grass", "Rocks",
                  "Metal"], "A"),
        _question("images/v2.JPEG", "Where does this object live?", ["Sea", "Desert", "House",
                  "Space"], "C"),
        _question("images/v3.JPEG", "How big is this object?", ["Tiny", "Small", "Large", "Huge"],
                  "B"),
        _question("images/v9.JPEG", "What colour is this object?", ["Red", "Blue", "Green",
                  "Black"], "D"),
        _question("images/v1.JPEG", "How fast is this object?", ["Slow", "Fast", "Still", "Varies"],
                  "D"),
    ]  # fmt: skip
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, questions


def test_reader_finds_flat_nested_and_missing_images(tiny_wikiqa: tuple[Path, Path]) -> None:
    root, questions = tiny_wikiqa
    dataset = load_imagewikiqa(root, questions)
    assert dataset.class_names == list(LETTERS)
    assert [e.label for e in dataset.examples] == [0, 2, 1, 3, 3]
    assert all(e.prompt and e.prompt.endswith("Choose A, B, C, or D.") for e in dataset.examples)
    assert dataset.examples[0].load().size == (24, 24)
    assert dataset.examples[2].source.endswith("val/n01440764/v3.JPEG")
    with pytest.raises(BadExampleError, match="v9.JPEG: image not found"):
        dataset.examples[3].load()


def test_generate_end_to_end_with_random_llava_counts_unparsed(
    tiny_wikiqa: tuple[Path, Path], tmp_path: Path
) -> None:
    root, questions = tiny_wikiqa
    store, out = tmp_path / "runs.sqlite", tmp_path / "report"
    args = ["--model", "random:llava", "--wikiqa-images", str(root), "--questions", str(questions),
            "--store", str(store), "--out", str(out), "--no-progress", "--workers", "1",
            "--json"]  # fmt: skip
    result = CliRunner().invoke(wikiqa_app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    summary = report["summary"]
    with RunStore(store) as runs:
        preds = runs.predictions(report["run_id"])
        assert runs.get_run(report["run_id"]).spec["dataset"] == str(questions.resolve())
        analysis = runs.get_analysis(report["analysis_id"])
    assert len(preds) == 5 and summary["n_failed"] == 1
    ok = [p for p in preds if p.ok]
    assert summary["n_unparsed"] == sum(p.pred is None for p in ok)
    assert all(p.hit is False for p in ok if p.pred is None)  # unparsed is wrong, never a guess
    assert summary["answer_distribution"]["unparsed"] == summary["n_unparsed"]
    assert analysis is not None and analysis.kind == "wikiqa"
    for name in ("markdown", "csv", "figure"):
        assert Path(report["files"][name]).stat().st_size > 0
    again = CliRunner().invoke(wikiqa_app, args)
    assert again.exit_code == 0 and json.loads(again.output)["newly_done"] == 0


def test_generate_through_an_api_model_parses_and_counts(
    tiny_wikiqa: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real HTTP on 127.0.0.1: answers in three formats, one unreadable."""
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "api-cache.sqlite"))
    replies = {"eat": "Answer: A", "live": "It lives in a house.", "big": "(D)", "fast": "no idea"}

    def answer(prompt: str) -> str:
        return next(reply for key, reply in replies.items() if key in prompt)

    root, questions = tiny_wikiqa
    with FakeApiServer("openai", key=None, answer=answer) as server:
        args = ["--model", "openai:test-model", "--base-url", server.base_url,
                "--wikiqa-images", str(root),
                "--questions", str(questions), "--store", str(tmp_path / "s.sqlite"),
                "--out", str(tmp_path / "o"), "--no-progress", "--json"]  # fmt: skip
        result = CliRunner().invoke(wikiqa_app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["summary"]
    # eat: A right; live: "house" -> C right; big: D wrong (B); fast: unparsed; v9: failed.
    assert (summary["n_ok"], summary["n_failed"], summary["n_unparsed"]) == (4, 1, 1)
    assert summary["accuracy"] == pytest.approx(0.5)
    assert summary["answer_distribution"] == {"A": 1, "B": 0, "C": 1, "D": 1, "unparsed": 1}


def test_likelihood_through_an_api_model_uses_letter_logprobs(
    tiny_wikiqa: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "api-cache.sqlite"))

    def logprobs(prompt: str) -> list[tuple[str, float]]:
        if "eat" in prompt:
            return [("A", -0.1), (" B", -2.5), ("C", -4.0)]  # D not among the top: None
        return [("(B", -0.3), ("D", -1.5)]

    root, questions = tiny_wikiqa
    spec = wikiqa_spec("openai:test-model", "likelihood", questions=questions)
    with FakeApiServer("openai", key=None, logprobs=logprobs) as server:
        options = ModelOptions(base_url=server.base_url)
        report = evaluate_wikiqa(spec, root, tmp_path / "s.sqlite", questions=questions,
                                 progress=False, model_options=options)  # fmt: skip
    with RunStore(tmp_path / "s.sqlite") as runs:
        preds = {p.example_id[:4]: p for p in runs.predictions(report["run_id"])}
    assert preds["0001"].scores == [-0.1, -2.5, -4.0, None] and preds["0001"].pred == 0
    assert preds["0002"].pred == 1 and preds["0002"].scores[0] is None
    assert report["summary"]["n_unparsed"] == 0
    assert report["summary"]["accuracy"] == pytest.approx(2 / 4)  # right: 0001 (A), 0003 (B)


def test_likelihood_scores_letters_like_a_full_forward(
    tiny_wikiqa: tuple[Path, Path], tmp_path: Path
) -> None:
    from vlmclf.methods.likelihood.reference import full_forward_log_probs
    from vlmclf.methods.likelihood.targets import continuation_tokens
    from vlmclf.models import load_model

    root, questions = tiny_wikiqa
    spec = wikiqa_spec("random:llava", "likelihood", questions=questions)
    report = evaluate_wikiqa(spec, root, tmp_path / "s.sqlite", questions=questions,
                             progress=False, workers=1)  # fmt: skip
    assert report["summary"]["n_unparsed"] == 0 and report["summary"]["n_failed"] == 1
    with RunStore(tmp_path / "s.sqlite") as runs:
        first = runs.predictions(report["run_id"])[0]
    model = load_model("random:llava")
    example = load_imagewikiqa(root, questions).examples[0]
    method = WikiQALikelihoodMethod(model, list(LETTERS), spec)
    context = method.target.context_text(example.prompt)
    tokens = continuation_tokens(model.tokenizer, context, LETTERS)
    inputs = dict(model.build_inputs([example.load()], [example.prompt]))
    reference = full_forward_log_probs(model.model, inputs, [tokens[x] for x in LETTERS])
    assert first.scores == pytest.approx([sum(v) for v in reference], abs=1e-4)
    best = max(range(4), key=lambda i: first.scores[i])
    assert first.pred == best and first.hit == (best == example.label)


def test_shipped_questions_without_images_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    args = ["--model", "random:llava", "--wikiqa-images", str(tmp_path / "empty"), "--limit", "3",
            "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "o"), "--no-progress"]
    result = CliRunner().invoke(wikiqa_app, args)
    assert result.exit_code == 1 and "every question failed" in result.output
    assert "failed 3" in result.output


def test_wikiqa_requires_model_and_images() -> None:
    result = CliRunner().invoke(wikiqa_app, ["--model", "random:llava"])
    assert result.exit_code == 2 and "--wikiqa-images" in result.output


# --------------------------------------------------------------------------- build


WIKI_ROWS = [
    {"classname": "stretcher", "text": "A stretcher carries patients. Raise the feet in shock."},
    {"classname": "stretcher", "text": "Stretchers fold."},
    {"classname": "otter", "text": "Otters eat fish and live by rivers."},
]


def _generation_reply(classname: str) -> str:
    questions = [
        {"question": "What position does this object allow in shock?",
         "choices": ["Trendelenburg", "Upright", "Sitting", "Prone"], "answer": 0,
         "reference": "Raise the feet in shock."},
        {"question": "What is the capital of France?",  # never says "this object": dropped
         "choices": ["Paris", "Rome", "Oslo", "Bern"], "answer": 0, "reference": "-"},
        {"question": "What do these objects eat?",  # answerable without the name: dropped
         "choices": ["Fish", "Rocks", "Metal", "Glass"], "answer": 0, "reference": "fish"},
        {"question": "Broken", "choices": ["only", "two"], "answer": 0},
    ]
    return f"Sure! ```json\n{json.dumps({'questions': questions})}\n```"


def _judge(prompt: str) -> str:
    """A text-only model that knows stretchers and always knows what fish-eaters eat."""
    if "Come up with" in prompt:
        return _generation_reply(re.search(r"questions for a (.+?) to examine", prompt).group(1))
    options = dict(re.findall(r"^([A-D])\. (.*)$", prompt, flags=re.M))
    knows = "stretcher" in prompt or "eat" in prompt
    want = {"Trendelenburg", "Fish"} if knows else {"Upright"}
    letter = next((k for k, v in options.items() if v in want), "A" if not knows else "B")
    return f"Answer: {letter}" if knows else letter


def test_build_keeps_questions_that_need_the_class_name(tmp_path: Path) -> None:
    wiki_file = tmp_path / "wiki.jsonl"
    wiki_file.write_text("".join(json.dumps(r) + "\n" for r in WIKI_ROWS))
    wiki = read_wiki(wiki_file)
    assert wiki["stretcher"].startswith("Article 1: A stretcher")
    assert "Article 2: Stretchers" in wiki["stretcher"]
    calls: list[list[str]] = []

    def chat(prompts: list[str], max_new_tokens: int) -> list[str | None]:
        calls.append(prompts)
        return [_judge(p) for p in prompts]

    built = build_questions(chat, ["stretcher", "otter", "unknown"], wiki, seed=7)
    counts = built["counts"]
    assert counts["no_wiki"] == 1 and counts["generated"] == 8 and counts["malformed"] == 2
    assert counts["no_this_object"] == 2 and len(built["candidates"]) == 4
    kept = built["questions"]
    # Only the stretcher's shock question is right with the name and wrong without it.
    assert [q["classname"] for q in kept] == ["stretcher"] and counts["kept"] == 1
    assert counts["answered_with_name"] == 3 and counts["not_without_name"] == 1
    for q in kept:
        stem, _, rest = q["text"].partition("\n")
        assert "this object" in stem and rest.endswith("Choose A, B, C, or D.")
        options = dict(re.findall(r"^([A-D])\. (.*)$", q["text"], flags=re.M))
        assert options[q["label"]] == "Trendelenburg"  # the shuffled answer follows its text
    fish = [c for c in built["candidates"] if "eat" in c["stem"]]
    assert all(not c["kept"] and c["pred_without_classname"] == c["label"] for c in fish)
    assert "Trendelenburg" in calls[1][0] and "stretcher" in calls[1][0]  # named question
    assert "we don't know what the object is" in calls[1][1]


def test_build_helpers_parse_replies_and_name_the_object() -> None:
    reply = '[{"question": "q", "choices": ["a","b","c","d"], "answer": 1}]'
    assert parse_generated(reply)[0]["answer"] == 1
    assert parse_generated("I cannot help with that.") is None
    assert with_class_name("Why is this object red?", "fire truck") == "Why is fire truck red?"
    assert with_class_name("This object floats.", "boat") == "Boat floats."
    assert with_class_name("What is red?", "boat") is None


def test_build_command_over_a_loopback_openai_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "api-cache.sqlite"))
    wiki_file = tmp_path / "wiki.jsonl"
    wiki_file.write_text("".join(json.dumps(r) + "\n" for r in WIKI_ROWS))
    classes = tmp_path / "classes.txt"
    classes.write_text("stretcher\notter\n")
    out = tmp_path / "new_questions.jsonl"
    with FakeApiServer("openai", key=None, answer=_judge) as server:
        args = ["build", "--model", "openai:test-model", "--base-url", server.base_url,
                "--classes", str(classes), "--wiki", str(wiki_file), "--out-file", str(out),
                "--store", str(tmp_path / "s.sqlite"), "--report-dir", str(tmp_path / "rep"),
                "--json"]  # fmt: skip
        result = CliRunner().invoke(wikiqa_app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # warnings go to stderr
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(kept) == report["counts"]["kept"] == 1  # the stretcher question only
    assert kept[0]["classname"] == "stretcher"
    assert re.search(r"\nA\. .*\nB\. .*\nC\. .*\nD\. .*\nChoose A, B, C, or D\.$", kept[0]["text"])
    for name in ("funnel_markdown", "funnel_csv", "figure", "candidates"):
        assert Path(report["files"][name]).stat().st_size > 0
    with RunStore(tmp_path / "s.sqlite") as runs:
        assert runs.get_analysis(report["analysis_id"]).kind == "wikiqa_build"


def test_run_wikiqa_table_lists_every_wikiqa_run(
    tiny_wikiqa: tuple[Path, Path], tmp_path: Path
) -> None:
    root, questions = tiny_wikiqa
    store = tmp_path / "s.sqlite"
    for method in ("generate", "likelihood"):
        spec = wikiqa_spec("random:llava", method, questions=questions)
        result = run_wikiqa(spec, root, store, tmp_path / "rep", questions=questions, limit=3,
                            progress=False, workers=1)  # fmt: skip
    assert {row["method"] for row in result["table"]} == {"generate", "likelihood"}
    assert all(row["n"] == 3 for row in result["table"])
    assert "likelihood" in Path(result["files"]["markdown"]).read_text()


def test_typer_group_registers_as_a_subcommand() -> None:
    app = typer.Typer()
    app.add_typer(wikiqa_app, name="wikiqa")
    result = CliRunner().invoke(app, ["wikiqa", "build", "--help"])
    assert result.exit_code == 0 and "--wiki" in result.output


# ------------------------------------------------------------------ the paper's unparsed rule


def paper_code_letters(n_unparsed: int) -> list[str]:
    """What the paper's evaluation notebook draws: ``random.seed(1234)`` once, then
    ``random.choice(all_choices)`` for each answer it cannot parse, in file order."""
    import random

    state = random.getstate()
    try:
        random.seed(1234)
        return [random.choice(["A", "B", "C", "D"]) for _ in range(n_unparsed)]
    finally:
        random.setstate(state)


def test_random_letters_follow_the_paper_stream_in_question_order() -> None:
    from vlmclf.analysis.wikiqa.run import random_letters_for_unparsed
    from vlmclf.records import Prediction

    preds = [Prediction(example_id=f"{line:04d}:x.JPEG", label=line % 4, text="?", pred=None,
                        hit=False) for line in range(1, 13)]  # fmt: skip
    preds[4] = Prediction(example_id="0005:x.JPEG", label=1, text="B", pred=1, hit=True)
    preds[6] = Prediction.failed("0007:x.JPEG", 3, "image not found")
    arrival = preds[::-1]  # answers arrive in any order; the letters follow the question file
    lettered = {p.example_id: p for p in random_letters_for_unparsed(arrival, 1234)}
    unparsed = [p.example_id for p in preds if p.ok and p.pred is None]
    expected = dict(zip(unparsed, paper_code_letters(len(unparsed)), strict=True))
    assert {i: LETTERS[lettered[i].pred] for i in unparsed} == expected
    assert all(lettered[i].hit == (lettered[i].pred == lettered[i].label) for i in unparsed)
    assert lettered["0005:x.JPEG"].pred == 1 and lettered["0007:x.JPEG"].pred is None


def test_paper_protocol_gives_unparsed_answers_the_papers_random_letter(
    tiny_wikiqa: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "api-cache.sqlite"))
    replies = {"eat": "Answer: A", "live": "It lives in a house.", "big": "(D)", "fast": "hmm"}
    root, questions = tiny_wikiqa
    summaries = {}
    with FakeApiServer("openai", key=None,
                       answer=lambda p: next(r for k, r in replies.items() if k in p)) as server:
        for protocol in ("clean", "paper"):
            args = ["--model", "openai:test-model", "--base-url", server.base_url,
                    "--wikiqa-images", str(root), "--questions", str(questions),
                    "--protocol", protocol,
                    "--parser", "robust",  # the paper's own rule is tested below
                    "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / protocol),
                    "--no-progress", "--json"]  # fmt: skip
            result = CliRunner().invoke(wikiqa_app, args)
            assert result.exit_code == 0, result.output
            summaries[protocol] = json.loads(result.output)
        printed = CliRunner().invoke(wikiqa_app, args[:-1])  # the paper run again, as text
    assert printed.exit_code == 0, printed.output
    assert "(generate, protocol paper)" in printed.output
    assert "unparsed 1 (given a random letter)" in printed.output
    clean, paper = summaries["clean"], summaries["paper"]
    # "fast" (line 5, answer D) is the one unparsed answer; the paper's first draw is D
    assert paper_code_letters(1) == ["D"]
    assert clean["summary"]["accuracy"] == pytest.approx(2 / 4)
    assert paper["summary"]["accuracy"] == pytest.approx(3 / 4)
    for report, rule in ((clean, "wrong"), (paper, "random-letter")):
        assert report["summary"]["n_unparsed"] == 1 and report["summary"]["unparsed_rule"] == rule
    assert clean["run_id"] != paper["run_id"]
    assert paper["spec"]["options"] == {"unparsed": "random-letter", "unparsed_seed": 1234}
    assert paper["spec"]["protocol"] == "paper" and paper["spec"]["cot"] is True
    assert paper["spec"]["max_new_tokens"] == 1024
    assert "options" not in clean["spec"] and "protocol" not in clean["spec"]
    table = Path(paper["files"]["markdown"]).read_text()
    assert "1 (given random letters (paper))" in table and "1 (counted wrong)" in table


def test_paper_protocol_puts_cot_after_assistant_as_the_papers_code_does(
    tiny_wikiqa: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmclf.models.hf import HFVisionLanguageModel

    root, questions = tiny_wikiqa
    sent: dict[str, list[str]] = {}
    original = HFVisionLanguageModel.format_prompt

    def recording(self: HFVisionLanguageModel, question: str) -> str:
        prompt = original(self, question)
        sent.setdefault(current, []).append(prompt)
        return prompt

    monkeypatch.setattr(HFVisionLanguageModel, "format_prompt", recording)
    specs = {}
    for current in ("clean", "paper"):
        args = ["--model", "random:llava", "--wikiqa-images", str(root),
                "--questions", str(questions), "--protocol", current, "--cot",
                "--max-new-tokens", "2", "--limit", "2",
                "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / current),
                "--no-progress", "--workers", "1", "--json"]  # fmt: skip
        result = CliRunner().invoke(wikiqa_app, args)
        assert result.exit_code == 0, result.output
        specs[current] = json.loads(result.output)["spec"]
    question = read_questions(questions)[0].stem
    paper_prompts, clean_prompts = sent["paper"], sent["clean"]
    # PAPER_PROTOCOL.md: `USER: <image>\n{question}\nASSISTANT: Let's think step by step.`
    assert specs["paper"]["prompt_template"] == (
        "USER: {image}\n{question}\nASSISTANT: Let's think step by step."
    )
    assert all(p.endswith("\nASSISTANT: Let's think step by step.") for p in paper_prompts)
    assert all(p.count("Let's think step by step.") == 1 for p in paper_prompts + clean_prompts)
    assert all(p.startswith("USER: <image>\n") for p in paper_prompts)
    assert any(question in p for p in paper_prompts)
    # clean: the cue ends the user's question, before the family's own assistant marker
    assert all("step by step. ASSISTANT:" in p or "step by step.\nASSISTANT:" in p
               for p in clean_prompts)  # fmt: skip
    assert "prompt_template" not in specs["clean"]


MMMU_CASES = [  # (answer, letter the MMMU rule reads, letter parse_choice reads)
    ("Answer: A", "A", "A"),
    ("(D)", "D", "D"),
    ("I think (A), no wait, (C).", "C", None),  # the last bracketed letter wins
    ("B or C? I pick C", "C", None),  # the last spaced letter wins
    ("B.,", "B", "B"),  # marks are stripped one kind at a time, "," first, then "."
    ("B,.", None, "B"),  # so here the "," stays and " B " is not found
    ("It lives in a house.", None, "A"),  # five words: the rule searches no option text
    ("The object is most likely found living in a house.", "A", "A"),
    ("A dog would eat meat, not grass", "A", None),  # any capital "A" word is a letter
    ("hmm", None, None),
]


@pytest.mark.parametrize(("answer", "mmmu", "robust"), MMMU_CASES)
def test_mmmu_rule_reads_letters_as_the_papers_evaluation(
    answer: str, mmmu: str | None, robust: str | None
) -> None:
    from vlmclf.analysis.wikiqa.parse import parse_choice_mmmu

    options = {"A": "in a house", "B": "in the sea", "C": "in a tree", "D": "underground"}
    assert parse_choice_mmmu(answer, options) == mmmu
    assert parse_choice(answer, options) == robust


def test_paper_protocol_reads_letters_with_the_mmmu_rule(
    tiny_wikiqa: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "api-cache.sqlite"))
    root, questions = tiny_wikiqa
    with FakeApiServer("openai", key=None, answer=lambda p: "B or C? I pick C") as server:
        reports = {}
        for protocol in ("clean", "paper"):
            args = ["--model", "openai:test-model", "--base-url", server.base_url,
                    "--wikiqa-images", str(root), "--questions", str(questions),
                    "--protocol", protocol,
                    "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / protocol),
                    "--no-progress", "--json"]  # fmt: skip
            result = CliRunner().invoke(wikiqa_app, args)
            assert result.exit_code == 0, result.output
            reports[protocol] = json.loads(result.output)
    clean, paper = reports["clean"]["summary"], reports["paper"]["summary"]
    assert clean["n_unparsed"] == clean["n_ok"] == 4 and clean["parser"] == "robust"
    assert paper["n_unparsed"] == 0 and paper["answer_distribution"]["C"] == 4
    assert paper["parser"] == "mmmu" and reports["paper"]["spec"]["options"]["parser"] == "mmmu"
    table = Path(reports["paper"]["files"]["markdown"]).read_text()
    assert "letters read" in table and "mmmu" in table



def test_output_path_writes_the_run_and_a_line_per_question(
    tiny_wikiqa: tuple[Path, Path], tmp_path: Path, torch_threads_restored: None
) -> None:
    root, questions = tiny_wikiqa
    store, out = tmp_path / "runs.sqlite", tmp_path / "files"
    args = ["--model", "random:llava", "--wikiqa-images", str(root), "--questions", str(questions),
            "--unparsed", "random-letter", "--store", str(store), "--out", str(tmp_path / "r"),
            "--no-progress", "--workers", "1", "--threads", "2", "--json",
            "--output-path", str(out), "--log-samples"]  # fmt: skip
    result = CliRunner().invoke(wikiqa_app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    run_id, summary = report["run_id"], report["summary"]
    results, rows = read_output_files(out, run_id)
    with RunStore(store, read_only=True) as runs:
        record = runs.get_run(run_id)
        stored = {p.example_id: p for p in runs.predictions(run_id)}
    assert results["run_id"] == run_id and results["identity"] == record.identity
    assert results["summary"]["accuracy"] == summary["accuracy"]
    assert results["summary"]["answer_distribution"] == summary["answer_distribution"]
    protocol = results["protocol"]
    assert (protocol["unparsed"], protocol["parser"], protocol["max_new_tokens"]) == (
        "random-letter", "robust", 16)  # fmt: skip
    assert results["class_names"] == list(LETTERS)
    assert results["threads"] == 2 == record.threads

    asked = [json.loads(line)["text"] for line in questions.read_text().splitlines()]
    assert len(rows) == 5 == len(stored)
    for row in rows:
        p = stored[row["example_id"]]
        assert row["answer"] == p.text and row["label_name"] == LETTERS[p.label]
        assert row["prompt"] == asked[int(row["example_id"].split(":")[0]) - 1]  # as sent
        assert list(row["options"]) == list(LETTERS) and row["options"]["A"] in row["prompt"]
        assert row["random_letter"] == (p.ok and p.pred is None)  # the paper's rule, marked
        assert row["pred_name"] is None or row["hit"] == (row["pred_name"] == row["label_name"])
    answered = [row for row in rows if row["outcome"] == "answer"]
    assert sum(row["random_letter"] for row in rows) == summary["n_unparsed"]
    assert sum(row["hit"] for row in answered) / len(answered) == summary["accuracy"]
    missing = next(row for row in rows if row["outcome"] != "answer")
    assert "v9.JPEG: image not found" in missing["error"]
    found = next(row for row in rows if row["example_id"].endswith("v3.JPEG"))
    assert Path(found["image"]) == root / "val" / "n01440764" / "v3.JPEG"


def _refused_port() -> int:
    import socket

    with socket.socket() as s:  # bound, then closed: nobody listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("problem", ["unreachable server", "missing key", "unknown model"])
def test_config_errors_stop_before_any_work_in_one_line(
    tiny_wikiqa: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    import time

    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "api-cache.sqlite"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = f"http://127.0.0.1:{_refused_port()}/v1"
    model, expected = {
        "unreachable server": (["openai:m", "--base-url", url],
                               f"the server at {url} does not answer (connection failed"),
        "missing key": (["openai:gpt-4o"], "OPENAI_API_KEY"),
        "unknown model": (["hff:some/model"], "unknown model prefix 'hff'"),
    }[problem]  # fmt: skip
    root, questions = tiny_wikiqa
    store = tmp_path / "s.sqlite"
    args = ["--model", *model, "--wikiqa-images", str(root), "--questions", str(questions),
            "--store", str(store), "--out", str(tmp_path / "o"), "--no-progress"]  # fmt: skip
    started = time.monotonic()
    result = CliRunner().invoke(wikiqa_app, args)
    assert result.exit_code == 2 and time.monotonic() - started < 20
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not store.exists() and not (tmp_path / "o").exists()  # nothing stored or written


def test_an_api_run_is_probed_once_without_the_key(
    tiny_wikiqa: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMCLF_API_CACHE", str(tmp_path / "api-cache.sqlite"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wikiqa-secret")
    root, questions = tiny_wikiqa
    with FakeApiServer("openai", key="sk-wikiqa-secret", answer=lambda p: "A") as server:
        args = ["--model", "openai:test-model", "--base-url", server.base_url, "--wikiqa-images",
                str(root), "--questions", str(questions), "--store", str(tmp_path / "s.sqlite"),
                "--out", str(tmp_path / "o"), "--no-progress", "--json"]  # fmt: skip
        result = CliRunner().invoke(wikiqa_app, args)
        methods = [r.method for r in server.requests]
    assert result.exit_code == 0, result.output
    assert methods[0] == "GET" and methods.count("GET") == 1  # the probe, before any question
    assert "sk-wikiqa-secret" not in json.dumps(server.requests[0].headers)
    assert json.loads(result.output)["summary"]["n_ok"] == 4
