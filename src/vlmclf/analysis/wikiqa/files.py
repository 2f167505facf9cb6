"""An ImageWikiQA run as files (``vlmclf wikiqa --output-path DIR [--log-samples]``): the results
JSON by eval's writer, with the protocol settings that decide how ImageWikiQA asks and reads a
letter, and a samples log whose lines carry each question, its options and the letter counted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmclf.analysis.wikiqa.run import (
    DEFAULT_MAX_NEW_TOKENS,
    answer_parser,
    question_options,
    question_sent,
    random_letters_for_unparsed,
    unparsed_rule,
)
from vlmclf.data.imagewikiqa import LETTERS
from vlmclf.data.types import Dataset
from vlmclf.methods.prompts import COT_MAX_NEW_TOKENS
from vlmclf.run.results import StoredPredictions
from vlmclf.run.run_files import image_path, write_run_files
from vlmclf.run.runner import select_examples
from vlmclf.spec import RunSpec, is_api_model


def wikiqa_protocol(spec: RunSpec) -> dict[str, Any]:
    """The settings that decide how a run asks and reads its letters (the results file's
    ``protocol``): eval's prompt, order and match do not apply to ImageWikiQA."""
    rule, _ = unparsed_rule(spec.model_dump())
    settings: dict[str, Any] = {"name": spec.protocol}
    if not is_api_model(spec.model):
        settings["dtype"] = spec.dtype
    default = COT_MAX_NEW_TOKENS if spec.cot else DEFAULT_MAX_NEW_TOKENS
    settings.update(
        cot=spec.cot, max_new_tokens=spec.max_new_tokens or default,
        prompt_template=spec.prompt_template or "the family's own format",
        parser=answer_parser(spec.model_dump()), unparsed=rule,
    )  # fmt: skip
    return settings | dict(spec.options)


def wikiqa_sample_rows(stored: StoredPredictions, dataset: Dataset) -> Iterator[dict[str, Any]]:
    """One line per question for ``--log-samples``: the image, the question as sent, its
    options, the right letter, the answer, the letter counted (after the unparsed rule: the
    paper's random letter is marked) and the hit."""
    examples = {example.id: example for example in dataset.examples}
    rule, seed = unparsed_rule(stored.spec.model_dump())
    predictions = stored.predictions()  # small: at most 2,000 questions
    if rule == "random-letter":
        predictions = random_letters_for_unparsed(predictions, seed)
    for p in predictions:
        example = examples.get(p.example_id)
        text = example.prompt if example is not None else None
        yield {
            "example_id": p.example_id,
            "image": image_path(example.source) if example is not None else None,
            "prompt": question_sent(text, stored.spec) if text else None,
            "options": question_options(text) if text else None,
            "label": p.label, "label_name": LETTERS[p.label], "answer": p.text,
            "scores": p.scores, "pred": p.pred,
            "pred_name": None if p.pred is None else LETTERS[p.pred], "hit": p.hit,
            "random_letter": bool(p.extra.get("random_letter")),
            "outcome": p.outcome, "flag": p.flag, "error": p.error,
        }  # fmt: skip


def write_wikiqa_files(
    out_dir: Path, spec: RunSpec, result: dict[str, Any], store_path: str | Path,
    dataset: Dataset, *, limit: int | None, log_samples: bool,
) -> list[Path]:  # fmt: skip
    """``--output-path``: the run's results JSON (and samples JSONL), as ``eval`` writes a run's;
    ``dataset`` is the ImageWikiQA the run answered, ``limit`` its selection."""
    chosen = frozenset(example.id for example in select_examples(dataset, limit))
    run_id = result["run_id"]
    stored = StoredPredictions(Path(store_path), run_id, spec, list(LETTERS), chosen)
    summary = {"run_id": run_id, **result["summary"], "spec": result["spec"],
               "protocol": wikiqa_protocol(spec), "store": str(store_path)}  # fmt: skip
    return write_run_files(
        out_dir, summary, stored, data_root=None, classes=None, log_samples=log_samples,
        sample_rows=lambda found: wikiqa_sample_rows(found, dataset),
    )  # fmt: skip
