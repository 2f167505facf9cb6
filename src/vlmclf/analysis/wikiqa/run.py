"""ImageWikiQA evaluation: does recognising the object carry over to knowledge about it?
(paper Section 5, Table 4.)

Two ways to answer, each a run in the store (dataset ``imagewikiqa``, resumable like ``eval``):

* ``generate``: the VLM answers the question text; the letter is read by ``parse_choice``
  (``parse.py``). An answer that names no option, or several, is counted in ``n_unparsed`` and,
  by default (``--unparsed wrong``, the clean protocol), is wrong. The paper's code instead gives
  it a random letter (``--unparsed random-letter``, ``--protocol paper``): one Python random
  stream seeded once with 1234, one ``random.choice`` of A-D per unparsed answer in question-file
  order. That adds about 25% of the unparsed answers to the accuracy by luck; the stored
  predictions keep the model's reading, and the rule is applied when the run is summarised.
* ``likelihood``: the four option *letters* are scored as the first answer token after the image
  and the question (the likelihood method's scoring core: one prefill per image, the letters
  scored after it); the highest log-probability wins. API models that return log-probabilities
  use ``score_letters``. Option texts are not scored: the question asks for a letter.

The summary adds ``n_unparsed`` and ``answer_distribution`` (letters chosen, to see letter bias)
to the usual metrics; the report table lists every ImageWikiQA run in the store, one row per
model and method, like the paper's table.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from vlmclf.analysis.wikiqa.parse import PARSERS, parser_for
from vlmclf.data.imagewikiqa import LETTERS, load_imagewikiqa, split_question_text
from vlmclf.methods import use_prompt_template
from vlmclf.methods.base import LoadedExample
from vlmclf.methods.outcomes import flag_of_text, record_without_text
from vlmclf.methods.prompts import COT_MAX_NEW_TOKENS, COT_SUFFIX
from vlmclf.metrics import summarize
from vlmclf.records import Prediction
from vlmclf.report.tables import csv_table, markdown_table
from vlmclf.run.distributed import is_main_process
from vlmclf.run.loading import ModelOptions
from vlmclf.run.runner import RunConfig, run
from vlmclf.spec import RunSpec
from vlmclf.store import RunStore

DATASET = "imagewikiqa"
DEFAULT_MAX_NEW_TOKENS = 16
UNPARSED_RULES = ("wrong", "random-letter")
PAPER_UNPARSED_SEED = 1234


@lru_cache(maxsize=4096)
def question_options(prompt: str) -> dict[str, str]:
    """{letter: option} of a question's text (cached: every answer to it is read against it)."""
    return split_question_text(prompt, "question")[1]


def question_sent(example_prompt: str | None, spec: RunSpec) -> str:
    """The user text: the question, then the CoT cue unless a prompt template places it (the
    paper's code puts it after ``ASSISTANT:``)."""
    if not example_prompt:
        raise ValueError("an ImageWikiQA example carries no question text (Example.prompt)")
    cot_in_question = spec.cot and spec.prompt_template is None
    return f"{example_prompt} {COT_SUFFIX}" if cot_in_question else example_prompt


class WikiQAGenerateMethod:
    """Ask each example's own question; read the letter from the answer."""

    def __init__(self, model: Any, class_names: list[str], spec: RunSpec):
        self.model = model
        self.spec = spec
        default = COT_MAX_NEW_TOKENS if spec.cot else DEFAULT_MAX_NEW_TOKENS
        self.max_new_tokens = spec.max_new_tokens or default
        self.parse = parser_for(answer_parser(spec.model_dump()))

    def preflight(self) -> list[str]:
        return []

    def predict(self, batch: list[LoadedExample]) -> list[Prediction]:
        questions = [question_sent(item.example.prompt, self.spec) for item in batch]
        start = time.perf_counter()
        images = [item.image for item in batch]
        answers = self.model.generate(images, questions, self.max_new_tokens)
        seconds = (time.perf_counter() - start) / max(1, len(batch))
        pairs = zip(batch, answers, strict=True)
        return [self._record(item, answer, seconds) for item, answer in pairs]

    def _record(self, item: LoadedExample, answer: object, seconds: float) -> Prediction:
        example = item.example
        if not isinstance(answer, str):  # an API call that gave no text for this example
            return record_without_text(example.id, example.label, answer)
        letter = self.parse(answer, question_options(example.prompt or ""))
        pred = None if letter is None else LETTERS.index(letter)
        return Prediction(
            example_id=example.id, label=example.label, text=answer, pred=pred,
            hit=pred == example.label, seconds=seconds, extra={"parsed": letter is not None},
            flag=flag_of_text(answer),
        )  # fmt: skip


class WikiQALikelihoodMethod:
    """Score the letters A-D as the first answer token; the most likely letter is the answer."""

    def __init__(self, model: Any, class_names: list[str], spec: RunSpec):
        self.model = model
        self.spec = spec
        self.target = None
        if not callable(getattr(model, "score_letters", None)):
            try:
                from vlmclf.methods.likelihood.targets import make_target
            except ModuleNotFoundError as err:
                raise RuntimeError(
                    "wikiqa --method likelihood needs vlmclf's likelihood scoring "
                    f"(methods/likelihood_targets.py), which is not available: {err}"
                ) from err
            self.target = make_target(model)

    def preflight(self) -> list[str]:
        return []

    def predict(self, batch: list[LoadedExample]) -> list[Prediction]:
        start = time.perf_counter()
        questions = [question_sent(item.example.prompt, self.spec) for item in batch]
        if self.target is None:
            scored = self.model.score_letters([i.image for i in batch], questions, list(LETTERS))
        else:
            scored = self._score_local(batch, questions)
        seconds = (time.perf_counter() - start) / max(1, len(batch))
        return [self._record(item, s, seconds) for item, s in zip(batch, scored, strict=True)]

    def _score_local(
        self, batch: list[LoadedExample], questions: list[str]
    ) -> list[dict[str, float]]:
        from vlmclf.methods.likelihood.targets import continuation_tokens

        target = self.target
        out: list[dict[str, float]] = [{} for _ in batch]
        groups: dict[str, list[int]] = {}
        for i, question in enumerate(questions):
            groups.setdefault(question, []).append(i)
        for question, rows in groups.items():
            tokens = continuation_tokens(target.tokenizer, target.context_text(question), LETTERS)
            sequences = [tokens[letter] for letter in LETTERS]
            images = [batch[i].image for i in rows]
            for sub_rows, prefix in target.image_prefixes(images, question, ()):
                values = target.scorer.score(prefix, sequences)
                for row, per_letter in zip(sub_rows, values, strict=True):
                    letters = zip(LETTERS, per_letter, strict=True)
                    out[rows[row]] = {letter: sum(v) for letter, v in letters}
        return out

    def _record(self, item: LoadedExample, scored: object, seconds: float) -> Prediction:
        example = item.example
        if not isinstance(scored, dict):
            return record_without_text(example.id, example.label, scored)
        scores = [scored.get(letter) for letter in LETTERS]
        known = [(s, i) for i, s in enumerate(scores) if s is not None]
        pred = max(known, key=lambda pair: (pair[0], -pair[1]))[1] if known else None
        return Prediction(
            example_id=example.id, label=example.label, scores=scores, pred=pred,
            hit=pred == example.label, seconds=seconds,
        )  # fmt: skip


def build_wikiqa_method(model: Any, class_names: list[str], spec: RunSpec) -> Any:
    if spec.method == "generate":
        use_prompt_template(model, spec)
        return WikiQAGenerateMethod(model, class_names, spec)
    if spec.method == "likelihood":
        return WikiQALikelihoodMethod(model, class_names, spec)
    raise ValueError(f"wikiqa --method must be generate or likelihood, not {spec.method!r}")


def wikiqa_spec(
    model: str, method: str = "generate", *, questions: str | Path | None = None,
    cot: bool = False, max_new_tokens: int | None = None, dtype: str = "float32",
    unparsed: str = "wrong", protocol: str = "clean", prompt_template: str | None = None,
    parser: str = "robust", answer_marker: str | None = None,
) -> RunSpec:  # fmt: skip
    """The run identity: the shipped question set is ``imagewikiqa``, another file its path.
    The rule for unparsed answers is part of it (how the answer is read)."""
    if unparsed not in UNPARSED_RULES:
        raise ValueError(f"--unparsed must be one of {', '.join(UNPARSED_RULES)}, got {unparsed!r}")
    dataset = DATASET if questions is None else str(Path(questions).resolve())
    if parser not in PARSERS:
        raise ValueError(f"--parser must be one of {', '.join(PARSERS)}, got {parser!r}")
    options: dict[str, Any] = {} if unparsed == "wrong" else {
        "unparsed": unparsed, "unparsed_seed": PAPER_UNPARSED_SEED}  # fmt: skip
    if parser != "robust":  # runs stored before the option keep their identity
        options["parser"] = parser
    if answer_marker is not None:  # the paper's reading of the whole decoded output
        options["answer_marker"] = answer_marker
    return RunSpec(model=model, dataset=dataset, method=method, cot=cot,
                   max_new_tokens=max_new_tokens, dtype=dtype, protocol=protocol,
                   options=options, prompt_template=prompt_template)  # fmt: skip


def answer_parser(spec: dict[str, Any]) -> str:
    """The rule that reads a letter from a stored run's answers (robust before the option)."""
    return str((spec.get("options") or {}).get("parser", "robust"))


def unparsed_rule(spec: dict[str, Any]) -> tuple[str, int]:
    """(rule, seed) of a stored run's spec; runs stored before the option count them wrong."""
    options = spec.get("options") or {}
    return str(options.get("unparsed", "wrong")), int(options.get("unparsed_seed", 0))


def question_line(example_id: str) -> int:
    """The question's line in its file (ids are ``<line>:<image name>``)."""
    head = example_id.split(":", 1)[0]
    return int(head) if head.isdigit() else 0


def random_letters_for_unparsed(predictions: list[Prediction], seed: int) -> list[Prediction]:
    """The paper's rule: in question-file order, each unparsed answer gets the next
    ``random.choice(["A", "B", "C", "D"])`` of one ``random.Random(seed)`` stream. (The paper's
    notebook seeds once for all the output files it scores; a run here is scored as if its file
    were the first.) Failures get no letter and draw nothing."""
    rng = random.Random(seed)
    out = []
    for p in sorted(predictions, key=lambda p: question_line(p.example_id)):
        if p.ok and p.pred is None:
            letter = rng.choice(list(LETTERS))
            pred = LETTERS.index(letter)
            p = replace(p, pred=pred, hit=pred == p.label, extra={**p.extra, "random_letter": True})
        out.append(p)
    return out


def wikiqa_summary(
    predictions: list[Prediction], unparsed: str = "wrong", seed: int = PAPER_UNPARSED_SEED
) -> dict[str, Any]:
    """The run's metrics with the unparsed rule applied; ``answer_distribution`` is the model's
    own reading (letters it chose, and how many it did not)."""
    ok = [p for p in predictions if p.ok]
    chosen = Counter(LETTERS[p.pred] if p.pred is not None else "unparsed" for p in ok)
    if unparsed == "random-letter":
        predictions = random_letters_for_unparsed(predictions, seed)
    summary = summarize(predictions, list(LETTERS))
    summary["n_unparsed"] = chosen.get("unparsed", 0)
    summary["unparsed_rule"] = unparsed
    summary["answer_distribution"] = {k: chosen.get(k, 0) for k in (*LETTERS, "unparsed")}
    return summary


def evaluate_wikiqa(
    spec: RunSpec,
    images_dir: str | Path,
    store_path: str | Path,
    *,
    questions: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    workers: int = 4,
    progress: bool = True,
    model_options: ModelOptions | None = None,
    build_method: Callable[[Any, list[str], RunSpec], Any] = build_wikiqa_method,
    threads: int | None = None,
) -> dict[str, Any]:
    """Answer every selected question not yet stored for ``spec``; return the run's summary.

    A normal run (same store, resume and failure records) over the ImageWikiQA reader;
    ``threads`` caps torch's CPU threads, recorded beside the run as ``eval``'s are.
    """
    config = RunConfig(
        store_path=Path(store_path),
        limit=limit,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        model=model_options or ModelOptions(dtype=spec.dtype),
        threads=threads,
    )
    result = run(
        spec,
        config,
        build_method,
        dataset=load_imagewikiqa(images_dir, questions),
        summarize_run=lambda predictions, _names: wikiqa_summary(
            predictions, *unparsed_rule(spec.model_dump())
        ) | {"parser": answer_parser(spec.model_dump())},
    )
    spec_dict = spec.model_dump(exclude_defaults=True)
    return {
        "run_id": result.run_id,
        "spec": spec_dict,
        "summary": result.summary,
        "newly_done": result.newly_done,
    }


# --------------------------------------------------------------------------- report


def wikiqa_rows(store: RunStore) -> list[dict[str, Any]]:
    """One row per ImageWikiQA run in the store (the paper's table), best accuracy first."""
    rows = []
    for record in store.list_runs():
        spec = record.spec
        if spec.get("dataset") != DATASET and not str(spec.get("dataset", "")).endswith(".jsonl"):
            continue
        if record.class_names != list(LETTERS):
            continue
        summary = wikiqa_summary(store.predictions(record.run_id), *unparsed_rule(spec))
        ci = summary["ci95"] or [None, None]
        rows.append({
            "model": spec["model"], "method": spec["method"], "cot": spec.get("cot", False),
            "questions": spec["dataset"], "accuracy": summary["accuracy"], "ci_low": ci[0],
            "ci_high": ci[1], "n": summary["n"], "n_unparsed": summary["n_unparsed"],
            "unparsed_rule": summary["unparsed_rule"], "parser": answer_parser(spec),
            "n_failed": summary["n_failed"], "run_id": record.run_id,
        })  # fmt: skip
    return sorted(rows, key=lambda r: -(r["accuracy"] or 0.0))


def write_wikiqa_report(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = [
        {"model": r["model"], "method": r["method"] + (" + CoT" if r["cot"] else ""),
         "accuracy (%)": _pct(r["accuracy"]),
         "95% CI": f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]",
         "letters read": r.get("parser", "robust"), "unparsed": _unparsed_cell(r),
         "failed": r["n_failed"], "n": r["n"],
         "run": r["run_id"]}
        for r in rows
    ]  # fmt: skip
    files = {"markdown": out_dir / "wikiqa.md", "csv": out_dir / "wikiqa.csv"}
    files["markdown"].write_text(markdown_table(table) + "\n", encoding="utf-8")
    files["csv"].write_text(csv_table(rows), encoding="utf-8")
    files["figure"] = plot_wikiqa(rows, out_dir / "wikiqa.png")
    return {name: str(path) for name, path in files.items()}


def _unparsed_cell(row: dict[str, Any]) -> str:
    rule = row.get("unparsed_rule", "wrong")
    given = "given random letters (paper)" if rule == "random-letter" else "counted wrong"
    return f"{row['n_unparsed']} ({given})"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def plot_wikiqa(rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy with 95% CI per model and method; chance (25%) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n{r['method']}" for r in rows]
    values = [r["accuracy"] or 0.0 for r in rows]
    pairs = list(zip(values, rows, strict=True))
    low = [v - (r["ci_low"] if r["ci_low"] is not None else v) for v, r in pairs]
    high = [(r["ci_high"] if r["ci_high"] is not None else v) - v for v, r in pairs]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(rows) + 1.5), 3.6))
    ax.bar(range(len(rows)), values, yerr=[low, high], capsize=4, color="tab:blue")
    ax.axhline(0.25, linestyle="--", color="grey", label="chance (25%)")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("ImageWikiQA accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_wikiqa(
    spec: RunSpec, images_dir: str | Path, store_path: str | Path,
    out_dir: str | Path | None = None, **options: Any,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate (``evaluate_wikiqa``), then write the table of every ImageWikiQA run in the store
    and store the analysis; returns the evaluation with ``table``, ``files``, ``analysis_id``."""
    result = evaluate_wikiqa(spec, images_dir, store_path, **options)
    if not is_main_process():  # under torchrun the main rank alone writes reports and the store
        return result | {"table": [], "files": {}, "analysis_id": None}
    with RunStore(store_path) as store:
        result["table"] = wikiqa_rows(store)
        result["files"] = write_wikiqa_report(result["table"], Path(out_dir)) if out_dir else {}
        key = {"run_id": result["run_id"], "limit": options.get("limit")}
        result["analysis_id"] = store.save_analysis("wikiqa", key, result)
    return result
