"""Building ImageWikiQA-style questions from Wikipedia text (paper Section 5, Figures 6-7).

For each class, a chat model reads the class's Wikipedia text and writes multiple-choice
questions that call the object "this object". A question is kept only if it needs the object's
identity: a text-only model answers it correctly when "this object" is replaced by the class
name, and wrongly when it is not (then the image, i.e. recognising the object, is what is
missing). Answer positions are shuffled with a fixed seed so the letters are balanced.

The three prompts follow the paper's generation and filtering prompts as published with its
code (``imagewikiqa/gen_data.ipynb`` in the authors' repository); answers are read with
``parse_choice``, so a reply like "Answer: B" counts (the original read the first character).

Any model can be the chat model: ``ChatFn`` is "prompts in, one answer (or None) per prompt
out". ``chat_from_model`` adapts a loaded vlmclf model: its ``complete`` method where it has
one, else ``generate`` with a blank white image, because vlmclf's VLM and API clients always
attach an image; a blank image carries no information about the object.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from vlmclf.analysis.wikiqa.parse import parse_choice
from vlmclf.data.imagewikiqa import LETTERS, format_question

ChatFn = Callable[[list[str], int], list[str | None]]

GENERATION_PROMPT = """Come up with {n} multiple-choice questions for a {classname} to examine \
the knowledge of an expert.

The questions should come from the following Wikipedia articles on {classname}:
```
{articles}
```

**Instruction**:
Each question should have four choices, one of which is the correct answer.
Note that the Wikipedia articles will not be accessible to the test-takers, so please do not \
reference specific details from the articles in the questions.
Use "this object" rather than "{classname}" in the questions. We want to give test-takers an \
image of this object, not the word itself.
Each question should have four fields: "question" (str), "choices" (list[str]), "answer" (int, \
starting from 0), and "reference" (str, original sentences from Wikipedia articles).
Output in JSON format."""

ANSWER_PROMPT = """Answer the multiple-choice question below.
{question}
A. {A}
B. {B}
C. {C}
D. {D}
{hint}Output only one character A/B/C/D."""

NO_NAME_HINT = (
    'The question mentions "this object". However, we don\'t know what the object is. '
    "Try your best to guess the answer without knowing the object.\n"
)
_SEPARATOR = "=" * 63


def chat_from_model(model: Any) -> ChatFn:
    """A ChatFn over a loaded vlmclf model (see the module docstring)."""
    complete = getattr(model, "complete", None)
    if callable(complete):
        return complete
    blank = Image.new("RGB", (64, 64), (255, 255, 255))

    def ask(prompts: list[str], max_new_tokens: int) -> list[str | None]:
        answers = model.generate([blank] * len(prompts), list(prompts), max_new_tokens)
        return [a if isinstance(a, str) else None for a in answers]

    return ask


def read_wiki(path: str | Path) -> dict[str, str]:
    """{classname: articles} from JSONL lines {"classname", "text"}; several lines per class
    are several articles, joined as the paper did ("Article 1: ...", separated by rules)."""
    articles: dict[str, list[str]] = {}
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--wiki: file {file} does not exist")
    for number, raw in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}:{number}: not valid JSON ({err.msg})") from None
        for name in ("classname", "text"):
            value = row.get(name) if isinstance(row, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{file}:{number}: field {name!r} must be a non-empty string")
        articles.setdefault(row["classname"].strip(), []).append(row["text"].strip())
    return {
        name: f"\n\n{_SEPARATOR}\n\n".join(f"Article {i + 1}: {t}" for i, t in enumerate(texts))
        for name, texts in articles.items()
    }


def parse_generated(text: str | None) -> list[dict[str, Any]] | None:
    """The question objects in a generation reply (JSON, possibly fenced), or None."""
    if not text:
        return None
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    start = min((i for i in (body.find("{"), body.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(body[start:])
    except json.JSONDecodeError:
        return None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if lists else [value]
    return [q for q in value if isinstance(q, dict)] if isinstance(value, list) else None


def well_formed(question: dict[str, Any]) -> bool:
    choices, answer = question.get("choices"), question.get("answer")
    return (
        isinstance(question.get("question"), str) and bool(question["question"].strip())
        and isinstance(choices, list) and len(choices) == 4
        and all(isinstance(c, str) and c.strip() for c in choices)
        and isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < 4
    )  # fmt: skip


def with_class_name(question: str, classname: str) -> str | None:
    """The question with "this object" replaced by the class name; None if it never says so."""
    capitalised = classname[:1].upper() + classname[1:]
    replacements = (("this object", classname), ("This object", capitalised),
                    ("these objects", classname + "s"))  # fmt: skip
    for phrase, name in replacements:
        if phrase in question:
            return question.replace(phrase, name)
    return None


def _shuffled(question: dict[str, Any], rng: random.Random) -> tuple[dict[str, str], str]:
    choices = [c.strip() for c in question["choices"]]
    correct = choices[question["answer"]]
    rng.shuffle(choices)
    return dict(zip(LETTERS, choices, strict=True)), LETTERS[choices.index(correct)]


def build_questions(
    chat: ChatFn,
    classes: Sequence[str],
    wiki: Mapping[str, str],
    *,
    filter_chat: ChatFn | None = None,
    per_class: int = 5,
    seed: int = 1234,
    max_new_tokens: int = 2048,
) -> dict[str, Any]:
    """Generate, shuffle and filter questions; returns ``{questions, candidates, counts}``.

    ``questions`` are the kept ones in the dataset's format (text, label, wiki, classname);
    ``candidates`` every well-formed question with both filter answers; ``counts`` the funnel.
    """
    rng = random.Random(seed)
    asker = filter_chat or chat
    counts = dict.fromkeys(("no_wiki", "generated", "malformed", "no_this_object",
                            "answered_with_name", "not_without_name", "kept"), 0)  # fmt: skip
    counts["classes"] = len(classes)
    named = [c for c in classes if c in wiki]
    counts["no_wiki"] = len(classes) - len(named)
    prompts = [GENERATION_PROMPT.format(n=per_class, classname=c, articles=wiki[c]) for c in named]
    replies = chat(prompts, max_new_tokens) if prompts else []
    candidates = []
    for classname, reply in zip(named, replies, strict=True):
        parsed = parse_generated(reply) or []
        counts["generated"] += len(parsed)
        for question in parsed:
            if not well_formed(question):
                counts["malformed"] += 1
                continue
            stem = question["question"].strip()
            named_stem = with_class_name(stem, classname)
            if named_stem is None:
                counts["no_this_object"] += 1
                continue
            options, answer = _shuffled(question, rng)
            candidates.append({
                "text": format_question(stem, options), "label": answer,
                "wiki": str(question.get("reference", "")), "classname": classname, "stem": stem,
                "question_with_classname": named_stem, "options": options,
            })  # fmt: skip
    _ask_filter(asker, candidates)
    kept = []
    for c in candidates:
        with_ok = c["pred_with_classname"] == c["label"]
        without_wrong = c["pred_without_classname"] != c["label"]
        counts["answered_with_name"] += with_ok
        counts["not_without_name"] += with_ok and without_wrong
        c["kept"] = with_ok and without_wrong
        if c["kept"]:
            kept.append({k: c[k] for k in ("text", "label", "wiki", "classname")})
    counts["kept"] = len(kept)
    return {"questions": kept, "candidates": candidates, "counts": counts}


def _ask_filter(asker: ChatFn, candidates: list[dict[str, Any]]) -> None:
    """Both filter answers for every candidate, parsed (None when unreadable)."""
    prompts = []
    for c in candidates:
        options, named = c["options"], c["question_with_classname"]
        prompts.append(ANSWER_PROMPT.format(question=named, hint="", **options))
        prompts.append(ANSWER_PROMPT.format(question=c["stem"], hint=NO_NAME_HINT, **options))
    answers = asker(prompts, 8) if prompts else []
    for i, c in enumerate(candidates):
        with_name, without_name = answers[2 * i], answers[2 * i + 1]
        c["answer_with_classname"], c["answer_without_classname"] = with_name, without_name
        c["pred_with_classname"] = parse_choice(with_name, c["options"])
        c["pred_without_classname"] = parse_choice(without_name, c["options"])


def pair_images(
    questions: list[dict[str, Any]], images_by_class: Mapping[str, Sequence[str]],
    per_question: int, seed: int = 1234,
) -> list[dict[str, Any]]:  # fmt: skip
    """One record per (question, image): ``per_question`` images of the question's class,
    sampled with a fixed seed (the paper used 10 ImageNet validation images per question)."""
    rng = random.Random(seed)
    out = []
    for question in questions:
        images = list(images_by_class.get(question["classname"], []))
        for image in rng.sample(images, min(per_question, len(images))):
            out.append({"image": image, **question})
    return out


def write_jsonl(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out


# --------------------------------------------------------------------------- report

_FUNNEL = (
    ("generated", "questions generated"), ("malformed", "malformed (dropped)"),
    ("no_this_object", "never say 'this object' (dropped)"),
    ("answered_with_name", "answered right WITH the class name"),
    ("not_without_name", "... and wrong WITHOUT it"), ("kept", "kept"),
)  # fmt: skip


def class_rows(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per class: well-formed candidates, answered with the name, kept."""
    rows: dict[str, dict[str, Any]] = {}
    for c in candidates:
        row = rows.setdefault(c["classname"], {"classname": c["classname"], "candidates": 0,
                                               "answered_with_name": 0, "kept": 0})  # fmt: skip
        row["candidates"] += 1
        row["answered_with_name"] += c["pred_with_classname"] == c["label"]
        row["kept"] += bool(c["kept"])
    return list(rows.values())


def write_build_report(result: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """The filter funnel and per-class counts as Markdown + CSV, and the funnel as a PNG."""
    from vlmclf.report.tables import csv_table, markdown_table

    out_dir.mkdir(parents=True, exist_ok=True)
    funnel = [{"stage": label, "questions": result["counts"][key]} for key, label in _FUNNEL]
    files = {"funnel_markdown": out_dir / "build_funnel.md"}
    files["funnel_csv"] = out_dir / "build_funnel.csv"
    files["funnel_markdown"].write_text(markdown_table(funnel) + "\n", encoding="utf-8")
    files["funnel_csv"].write_text(csv_table(funnel), encoding="utf-8")
    per_class = class_rows(result["candidates"])
    if per_class:
        files["classes_markdown"] = out_dir / "build_classes.md"
        files["classes_csv"] = out_dir / "build_classes.csv"
        files["classes_markdown"].write_text(markdown_table(per_class) + "\n", encoding="utf-8")
        files["classes_csv"].write_text(csv_table(per_class), encoding="utf-8")
    files["figure"] = _plot_funnel(funnel, out_dir / "build_funnel.png")
    return {name: str(path) for name, path in files.items()}


def _plot_funnel(funnel: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.barh(range(len(funnel)), [row["questions"] for row in funnel], color="tab:blue")
    ax.set_yticks(range(len(funnel)), [row["stage"] for row in funnel], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("questions")
    ax.set_title("ImageWikiQA build: the with/without-class-name filter")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_wikiqa_build(
    chat: ChatFn, classes: Sequence[str], wiki: Mapping[str, str], out_path: str | Path, *,
    store_path: str | Path, spec: dict[str, Any], out_dir: str | Path | None = None,
    filter_chat: ChatFn | None = None, per_class: int = 5, seed: int = 1234,
    images_by_class: Mapping[str, Sequence[str]] | None = None, per_question: int = 10,
) -> dict[str, Any]:  # fmt: skip
    """Build, write the kept questions (paired with images when given) and every candidate with
    its filter answers (``<out>.candidates.jsonl``), the report, and store the analysis."""
    from vlmclf.store import RunStore

    built = build_questions(
        chat, classes, wiki, filter_chat=filter_chat, per_class=per_class, seed=seed
    )
    records = built["questions"]
    if images_by_class is not None:
        records = pair_images(records, images_by_class, per_question, seed)
    out = write_jsonl(records, out_path)
    audit = write_jsonl(built["candidates"], Path(out).with_suffix(".candidates.jsonl"))
    files = {"questions": str(out), "candidates": str(audit)}
    if out_dir is not None:
        files |= write_build_report(built, Path(out_dir))
    result = {"counts": built["counts"], "n_records": len(records), "files": files}
    with RunStore(store_path) as store:
        result["analysis_id"] = store.save_analysis("wikiqa_build", spec, result)
    return result
