"""The probe's table (Markdown + CSV, laid out like the probing rows of the paper's Table 3) and
its figure (accuracy per kind of features, both protocols side by side, with 95% CIs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmclf.analysis.probe.config import CLEAN_LABEL, PAPER_LABEL
from vlmclf.report.cells import markdown_cell
from vlmclf.report.tables import csv_table, markdown_table, text_table

FEATURE_NAMES = {
    "last_token": "last token probing",
    "mean": "avg token probing",
    "embedding": "image embedding probing (CLIP baseline)",
}
PROTOCOLS = ("paper", "clean")


def probe_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, features), both protocols' numbers in columns."""
    rows = []
    for block in _feature_blocks(result):
        row: dict[str, Any] = {
            "model": block["model"],
            "features": FEATURE_NAMES.get(block["pooling"], block["pooling"]),
            "layer": block.get("layer"),
            "dim": block["dim"],
        }
        for protocol in PROTOCOLS:
            outcome = block["protocols"][protocol]
            row[f"{protocol}_acc"] = outcome["accuracy"]
            row[f"{protocol}_ci_low"], row[f"{protocol}_ci_high"] = outcome["ci95"]
            row[f"{protocol}_epoch"] = outcome["chosen"]["epoch"]
        row["clean_weight_decay"] = block["protocols"]["clean"]["chosen"]["weight_decay"]
        row["n_train"] = block["n_train"]
        row["n_eval"] = block["n_eval"]
        rows.append(row)
    return rows


def _feature_blocks(result: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = [
        {"model": result["model"], "pooling": pooling, "layer": result["layer"], **block}
        for pooling, block in result["features"].items()
    ]
    baseline = result.get("clip_baseline")
    if baseline:
        blocks += [
            {"model": baseline["model"], "pooling": pooling, "layer": None, **block}
            for pooling, block in baseline["features"].items()
        ]
    return blocks


_ACC = ("acc", "ci_low", "ci_high")


def _percent(acc: float, low: float, high: float) -> str:
    return f"{100 * acc:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def markdown_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracies as percentages with their 95% CI, the paper's protocol marked with a dagger."""
    return [
        {
            "model": row["model"],
            "features": row["features"],
            "paper protocol† (%)": _percent(*(row[f"paper_{k}"] for k in _ACC)),
            "clean protocol (%)": _percent(*(row[f"clean_{k}"] for k in _ACC)),
            "n train / eval": f"{row['n_train']} / {row['n_eval']}",
        }
        for row in rows
    ]


def probe_title(result: dict[str, Any]) -> str:
    splits = f"{result['train_split']} -> {result['eval_split']}"
    return (
        f"Probing on {result['dataset']} ({splits}), layer {result['layer']}, "
        f"{result['head']} head"
    )


def probe_notes(result: dict[str, Any]) -> list[str]:
    return [
        *settings_lines(result),
        f"† {PAPER_LABEL}.",
        f"Clean: {CLEAN_LABEL}.",
        "Brackets: 95% bootstrap confidence interval over evaluation examples.",
    ]


def probe_markdown(result: dict[str, Any]) -> str:
    heading = f"**{markdown_cell(probe_title(result))}**"
    table = markdown_table(markdown_rows(probe_rows(result)))
    return "\n".join([heading, "", table, "", *probe_notes(result)]) + "\n"


def probe_text(result: dict[str, Any]) -> str:
    """The same for the terminal: aligned columns, no Markdown escapes."""
    table = text_table(markdown_rows(probe_rows(result)))
    return "\n".join([probe_title(result), "", table, "", *probe_notes(result)]) + "\n"


def optimiser_lines(result: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """How each protocol's probe was trained, from what its training recorded (``chosen``):
    the paper protocol's Adam epochs, the clean protocol's L-BFGS to convergence."""
    lines = []
    for protocol in PROTOCOLS:
        chosen = [block["protocols"][protocol].get("chosen") or {}
                  for block in (result.get("features") or {}).values()
                  if protocol in block.get("protocols", {})]  # fmt: skip
        if chosen:
            lines.append(f"{protocol.capitalize()} protocol's probe: {_training_words(chosen)}.")
    if lines:
        return lines
    return [f"{settings['epochs']} epochs, Adam lr {settings['lr']:g}, "
            f"batch {settings['batch_size']}."]  # fmt: skip


def _training_words(chosen: list[dict[str, Any]]) -> str:
    """One protocol's training over its feature sets: what they share, and what each chose."""

    def shared(key: str) -> Any:
        values = {str(c.get(key)) for c in chosen}
        return chosen[0].get(key) if len(values) == 1 else "chosen per feature set"

    optimiser = shared("optimizer") or "Adam"
    words = str(optimiser)
    if optimiser == "Adam":
        words += f" lr {shared('lr')}, batch {shared('batch_size')}, {shared('epochs_run')} epochs"
    decay = shared("weight_decay")
    if decay is not None:
        words += f", weight decay {decay}"
    return words


REPORTED_TEXT = {"paper": "the paper protocol's column (best test epoch: optimistic)",
                 "clean": "the clean protocol's column (chosen on validation)"}  # fmt: skip


def prompt_line(result: dict[str, Any]) -> str:
    """The prompt the features were extracted with and what the mean pools over."""
    template = result.get("prompt_template")
    shown = (template or "").replace("\n", "\\n")  # one line in the report
    prompt = f"prompt `{shown}`" if template else "the family's own prompt"
    pooled = (
        "every position (pads included where a batch pads)"
        if result.get("positions") == "all" else "the real tokens"
    )  # fmt: skip
    return f"Features: {prompt} with question `{result.get('question')}`; mean over {pooled}."


def settings_lines(result: dict[str, Any]) -> list[str]:
    """How the probes were trained and which column the protocol reports."""
    settings = result.get("settings")
    if not settings:
        return []
    trained = (
        f"Protocol {result.get('protocol', 'clean')}: {settings['features']} features "
        f"({settings['dtype']}), shuffled {settings['shuffle']}."
    )
    lines = [trained, prompt_line(result), *optimiser_lines(result, settings)]
    baseline = result.get("clip_baseline") or {}
    if baseline.get("epochs") is not None:
        embeddings = "L2-normalised" if baseline.get("l2_normalized") else "its"
        lines.append(
            f"CLIP baseline ({baseline['model']}): {embeddings} image embeddings, "
            f"{baseline['epochs']} epochs."
        )
    reported = REPORTED_TEXT.get(result.get("reported", ""), "")
    return [*lines, f"Reported: {reported}."] if reported else lines


def plot_probe(result: dict[str, Any], path: Path) -> Path:
    """Grouped bars: one group per (model, features), paper vs clean protocol, CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = probe_rows(result)
    labels = [f"{row['model']}\n{row['features']}" for row in rows]
    x = np.arange(len(rows))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(5.0, 2.4 * len(rows)), 4.2))
    styles = {"paper": ("paper protocol (epoch chosen on eval: optimistic)", "#c44e52"),
              "clean": ("clean protocol (chosen on validation)", "#4c72b0")}  # fmt: skip
    for offset, protocol in zip((-width / 2, width / 2), PROTOCOLS, strict=True):
        acc = np.array([100 * row[f"{protocol}_acc"] for row in rows])
        low = np.array([100 * row[f"{protocol}_ci_low"] for row in rows])
        high = np.array([100 * row[f"{protocol}_ci_high"] for row in rows])
        name, colour = styles[protocol]
        bars = ax.bar(x + offset, acc, width, label=name, color=colour,
                      yerr=[acc - low, high - acc], capsize=3)  # fmt: skip
        ax.bar_label(bars, labels=[f"{a:.1f}" for a in acc], fontsize=7, label_type="center",
                     color="white")  # fmt: skip
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Probing {result['dataset']} ({result['eval_split']}), layer {result['layer']}")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend below the axes, whole
    plt.close(fig)
    return path


def write_probe_report(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """probe.md, probe.csv and probe.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": out_dir / "probe.md",
        "csv": out_dir / "probe.csv",
        "figure": out_dir / "probe.png",
    }
    files["markdown"].write_text(probe_markdown(result))
    files["csv"].write_text(csv_table(probe_rows(result)))
    plot_probe(result, files["figure"])
    return files
