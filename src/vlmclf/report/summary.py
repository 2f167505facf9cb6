"""Plain-text and JSON views of a run's summary, for the terminal."""

from __future__ import annotations

from typing import Any

from vlmclf.spec import RunSpec, is_api_model
from vlmclf.terminal import terminal_safe


def _fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}"
    if ci:
        text += f"  [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def accuracy_rule(spec: RunSpec) -> str:
    """What 'accuracy' means for this run, said next to the number."""
    if spec.method != "generate":
        return "top-1 over the class scores"
    if spec.match == "contain":
        return "paper's rule: answer contains the true name"
    return f"answers mapped to labels by {spec.match}"


def describe_spec(spec: RunSpec, split: str | None = None) -> str:
    """One line saying what was run."""
    what = spec.method
    if spec.method not in ("clip", "classifier"):
        what += f" {spec.setting}-world"
    if spec.k is not None:
        what += f" K={spec.k} ({spec.order} order)"
    if spec.choices != "random":
        what += f" {spec.choices} choices by {spec.choice_model}"
    if spec.answer_format != "names":
        what += f" format={spec.answer_format}"
    if spec.prompt != "base":
        what += f" prompt={spec.prompt}"
    if spec.cot:
        what += " +CoT"
    for key, value in sorted(spec.options.items()):
        what += f" {key}={value}"
    return f"{spec.model} on {spec.dataset} ({split or spec.split or 'default split'}), {what}"


def _examples_line(summary: dict[str, Any]) -> str:
    """Counts of the three outcome kinds (older summaries only know ``n_failed``)."""
    if "n_answers" not in summary:
        return f"{summary['n']} ({summary['n_failed']} failed)"
    return (
        f"{summary['n']}: {summary['n_answers']} answered, {summary['n_data_failed']} data "
        f"failures, {summary['n_transient']} transient failures"
    )


def _provisional_note(summary: dict[str, Any]) -> str:
    if not summary.get("provisional"):
        return ""
    return (
        f"   PROVISIONAL: {summary['n_transient']} transient failures left; "
        "re-run the same command to retry them"
    )


def summary_table(run_id: str, spec: RunSpec, summary: dict[str, Any], store_path: str) -> str:
    """The summary a person reads after a run: metrics with 95% bootstrap intervals."""
    rows = [
        ("run", run_id),
        ("what", describe_spec(spec, summary.get("split"))),
        ("examples", _examples_line(summary)),
        ("denominator", summary.get("denominator", "")),
        (
            "accuracy",
            _fmt(summary.get("accuracy"), summary.get("ci95"))
            + f"   {accuracy_rule(spec)}"
            + _provisional_note(summary),
        ),
        ("accuracy (all)", _fmt(summary.get("accuracy_all")) + "   failures counted as wrong"),
        ("strict top-1", _fmt(summary.get("strict_accuracy"), summary.get("strict_ci95"))),
        ("top-5", _fmt(summary.get("top5"))),
        ("balanced acc.", _fmt(summary.get("balanced_accuracy"))),
        (
            "macro P / R / F1",
            " / ".join(
                _fmt(summary.get(k)) for k in ("macro_precision", "macro_recall", "macro_f1")
            ),
        ),
    ]
    usage = summary.get("usage")
    if usage:
        cost = usage.get("estimated_cost_usd")
        rows.append(
            (
                "API usage",
                f"{usage.get('requests', 0)} requests, {usage.get('input_tokens', 0)} in / "
                f"{usage.get('output_tokens', 0)} out tokens, cost "
                + ("unknown" if cost is None else f"${cost:.4f}"),
            )
        )
    rows.insert(2, ("protocol", protocol_line(spec)))  # right after "what"
    rows.append(("store", store_path))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {terminal_safe(value)}" for name, value in rows)


def summary_json(
    run_id: str, spec: RunSpec, summary: dict[str, Any], store_path: str
) -> dict[str, Any]:
    """The machine-readable summary: the metrics plus what was run and where it is stored."""
    return {
        "run_id": run_id,
        **summary,
        "spec": spec.model_dump(exclude_defaults=True),
        "protocol": {"name": spec.protocol, **protocol_settings(spec)},
        "store": store_path,
    }


def protocol_settings(spec: RunSpec) -> dict[str, Any]:
    """Every setting a protocol resolves for this run, as it was used (shown in every report)."""
    settings: dict[str, Any] = {"prompt": spec.prompt}
    if not is_api_model(spec.model):  # an API model's weights and their dtype are not ours
        settings["dtype"] = spec.dtype
    if spec.method == "clip":
        settings["templates"] = spec.templates
        return settings
    settings["prompt_template"] = spec.prompt_template or "the family's own format"
    if spec.method == "generate":
        settings.update(
            order=spec.order, max_new_tokens=spec.max_new_tokens or "method default",
            match=spec.match,
        )  # fmt: skip
    settings.update(spec.options)
    return settings


def protocol_line(spec: RunSpec) -> str:
    """``paper: prompt=base dtype=bfloat16 ...`` with strings quoted so whitespace shows."""
    parts = []
    for key, value in protocol_settings(spec).items():
        parts.append(
            f"{key}={value!r}" if isinstance(value, str) and " " in value else f"{key}={value}"
        )
    return f"{spec.protocol}: " + " ".join(parts)
