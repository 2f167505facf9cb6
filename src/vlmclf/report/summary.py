"""Plain-text and JSON views of a run's summary, for the terminal."""

from __future__ import annotations

from typing import Any

from vlmclf.spec import RunSpec


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
    if spec.prompt != "base":
        what += f" prompt={spec.prompt}"
    if spec.cot:
        what += " +CoT"
    for key, value in sorted(spec.options.items()):
        what += f" {key}={value}"
    return f"{spec.model} on {spec.dataset} ({split or spec.split or 'default split'}), {what}"


def summary_table(run_id: str, spec: RunSpec, summary: dict[str, Any], store_path: str) -> str:
    """The summary a person reads after a run: metrics with 95% bootstrap intervals."""
    rows = [
        ("run", run_id),
        ("what", describe_spec(spec, summary.get("split"))),
        ("examples", f"{summary['n']} ({summary['n_failed']} failed)"),
        (
            "accuracy",
            _fmt(summary.get("accuracy"), summary.get("ci95")) + f"   {accuracy_rule(spec)}",
        ),
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
    rows.append(("store", store_path))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def summary_json(
    run_id: str, spec: RunSpec, summary: dict[str, Any], store_path: str
) -> dict[str, Any]:
    """The machine-readable summary: the metrics plus what was run and where it is stored."""
    return {
        "run_id": run_id,
        **summary,
        "spec": spec.model_dump(exclude_defaults=True),
        "store": store_path,
    }
