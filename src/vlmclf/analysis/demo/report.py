"""The demo's outputs: two figures, a Markdown summary and the one-page HTML report.

The findings are stored as a ``demo`` analysis in the run store, so ``vlmclf report`` draws
them like any other analysis (``DRAWERS`` and ``analysis_table`` in ``report.html_figures``);
the demo's page holds its runs, its probe and this analysis, and nothing else in the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmclf.report.tables import markdown_table


def findings_rows(findings: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [
        {
            "#": str(f.get("id", i)),
            "finding of the paper": f["finding"],
            "evidence (95% CI)": f["evidence"],
            "on the organism": f["verdict"],
        }
        for i, f in enumerate(findings, 1)
    ]


def draw_frequency(result: dict[str, Any], out: Path) -> Path:
    """Per-class accuracy of the Zipf and the uniform organism against the Zipf counts."""
    import matplotlib.pyplot as plt

    finding = next(f for f in result["findings"] if f["id"] == "5")
    counts = result["caption_counts"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("zipf", "Zipf-frequency organism"), ("uniform", "uniform-frequency")):
        accuracy = finding["details"]["per_class"][key]
        names = [n for n in counts if n in accuracy]
        ax.scatter([counts[n] for n in names], [accuracy[n] for n in names], label=label)
        if key == "zipf":
            for n in names:
                ax.annotate(n, (counts[n], accuracy[n]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("captions mentioning the class in the Zipf organism's training data (log)")
    ax.set_ylabel("per-class accuracy (open-world generation)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Frequency intervention: same images, same encoder, captions Zipf vs uniform")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_label_set_size(result: dict[str, Any], out: Path) -> Path:
    """Accuracy of CLIP and VLM likelihood by K, and the VLM's error over CLIP's."""
    import matplotlib.pyplot as plt

    curve = next(f for f in result["findings"] if f["id"] == "4")["details"]["curve"]
    ks = [row["k"] for row in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    left.plot(ks, [row["clip"] for row in curve], "o-", label="CLIP zero-shot")
    left.plot(ks, [row["vlm"] for row in curve], "s-", label="VLM likelihood")
    left.set_xlabel("classes offered (K)")
    left.set_ylabel("accuracy")
    left.legend(fontsize=8)
    ratio = [row["error_ratio"] for row in curve]
    lows = [(row["error_ratio_ci95"] or [r, r])[0] for row, r in zip(curve, ratio, strict=True)]
    highs = [(row["error_ratio_ci95"] or [r, r])[1] for row, r in zip(curve, ratio, strict=True)]
    right.errorbar(ks, ratio, yerr=[[r - lo for r, lo in zip(ratio, lows, strict=True)],
                                    [hi - r for r, hi in zip(ratio, highs, strict=True)]],
                   fmt="o-", capsize=3)  # fmt: skip
    right.set_xlabel("classes offered (K)")
    right.set_ylabel("VLM error / CLIP error (95% CI)")
    fig.suptitle("Label-set size (the paper's Figure 2), Fashion-MNIST")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_demo(result: dict[str, Any], folder: Path) -> list[Path]:
    """Both figures into ``folder`` (what ``vlmclf report`` calls for a ``demo`` analysis)."""
    import matplotlib

    matplotlib.use("Agg")
    return [
        draw_label_set_size(result, folder / "label_set_size.png"),
        draw_frequency(result, folder / "frequency_intervention.png"),
    ]


def markdown_report(result: dict[str, Any], figures: list[Path]) -> str:
    return "\n".join([
        "# vlmclf demo: the paper's findings on the organism",
        "",
        findings_note(result),
        "",
        "## Accuracy",
        "",
        markdown_table(result["accuracies"]),
        "",
        "## Findings",
        "",
        markdown_table(findings_rows(result["findings"])),
        "",
        *[f"![{path.stem}]({path.name})" for path in figures],
        "",
    ])  # fmt: skip


def write_reports(result: dict[str, Any], store_path: Path, out_dir: Path) -> dict[str, str]:
    """Figures and Markdown into ``out_dir``, the ``demo`` analysis into the store, and the
    HTML page; returns the files' paths."""
    from vlmclf.store import RunStore

    figures = draw_demo(result, out_dir)
    markdown = out_dir / "demo.md"
    markdown.write_text(markdown_report(result, figures))
    stored = {key: value for key, value in result.items() if key != "files"}
    with RunStore(store_path) as store:
        analysis_id = store.save_analysis(
            "demo", {"sizes": result["sizes"], "runs": result["runs"]}, stored
        )
    page = out_dir / "report.html"
    page.write_text(demo_page(store_path, result, analysis_id), encoding="utf-8")
    return {
        "report": str(markdown),
        "html": str(page),
        **{path.stem: str(path) for path in figures},
    }


def lead_html(result: dict[str, Any]) -> str:
    """The findings and the accuracy table (CFG and the probe are not runs), escaped."""
    from vlmclf.report.html_parts import esc, html_table

    return (
        '<h2 id="findings">The paper\'s findings on the organism</h2>'
        f'<p class="note">{esc(findings_note(result))}</p>'
        f'{html_table(findings_rows(result["findings"]), css_id="demo-findings")}'
        '<h3>Accuracy of every way of classifying (95% bootstrap CI)</h3>'
        f'{html_table(result["accuracies"], css_id="demo-accuracy")}'
    )


def findings_note(result: dict[str, Any]) -> str:
    sizes, lik = result["sizes"], result["likelihood"]
    return (
        f"Fashion-MNIST test split: CLIP and the probe on {sizes['n_clip']} images, every VLM "
        f"method on {sizes['n_vlm']} of them; comparisons are paired on the images both "
        f"scored. Likelihood uses the paper protocol's answer prefix {lik['answer_prefix']!r}; "
        f"CFG its {lik['cfg_prior']} prior and grid, t chosen by 2-fold cross-fitting "
        f"(t per fold: {lik['cfg_t_per_fold']}). A verdict holds only when its 95% interval "
        "excludes the null."
    )


def demo_page(store_path: Path, result: dict[str, Any], analysis_id: str) -> str:
    """The page of ``vlmclf report`` restricted to the demo's runs, probe and findings, with
    the findings first."""
    from vlmclf.report.html import load_run_view, page_html
    from vlmclf.store import RunStore

    with RunStore(store_path, read_only=True) as store:
        views = [load_run_view(store, store.get_run(run_id)) for run_id in result["runs"].values()]
        analyses = [
            store.get_analysis(analysis_id),
            store.get_analysis(result["probe_analysis"]),
        ]
    kept = [a for a in analyses if a is not None]
    return page_html(store_path, views, kept, lead_html(result))
