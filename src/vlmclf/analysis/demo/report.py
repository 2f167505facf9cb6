"""The demo's outputs: two figures, a Markdown summary and the one-page HTML report.

The findings are stored as a ``demo`` analysis in the run store, so ``vlmclf report`` draws
them like any other analysis (registered in ``analysis/views.py``);
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
    """Left: per-class accuracy of the Zipf and the uniform organism against the Zipf counts.
    Right (when the reversed organism ran): each class's accuracy change against the factor by
    which reversing the ranking changed its captions."""
    import matplotlib.pyplot as plt

    finding = next(f for f in result["findings"] if f["id"] == "5")
    per_class = finding["details"]["per_class"]
    counts = result["caption_counts"]
    reversal = "reversal" in per_class
    fig, axes = plt.subplots(1, 2 if reversal else 1, figsize=(12 if reversal else 7, 4.5))
    left = axes[0] if reversal else axes
    styles = {  # the Zipf points drawn last, on top, and hollow uniform ones show beneath
        "uniform": ("uniform-frequency", {"facecolors": "none", "edgecolors": "tab:orange",
                                          "s": 70, "zorder": 2}),
        "zipf": ("Zipf-frequency organism", {"color": "tab:blue", "s": 24, "zorder": 3}),
    }  # fmt: skip
    for key, (label, style) in styles.items():
        accuracy = per_class[key]
        names = [n for n in counts if n in accuracy]
        left.scatter([counts[n] for n in names], [accuracy[n] for n in names], label=label,
                     **style)  # fmt: skip
        if key == "zipf":
            _label_points(left, names, [counts[n] for n in names], [accuracy[n] for n in names])
    left.set_xscale("log")
    left.set_xlabel("captions mentioning the class in the Zipf organism's training data (log)")
    left.set_ylabel("per-class accuracy (open-world generation)")
    left.set_ylim(-0.05, 1.05)
    left.set_title("Zipf vs uniform captions (same images, same encoder)", fontsize=10)
    left.legend(fontsize=8)
    if reversal:
        right = axes[1]
        factor, change = per_class["count_factor"], per_class["reversal"]
        names = list(change)
        xs, ys = [factor[n] for n in names], [change[n] for n in names]
        right.scatter(xs, ys, color="tab:green")
        _label_points(right, names, xs, ys)
        right.axhline(0, color="grey", linewidth=0.8)
        right.set_xscale("log")
        right.set_xlabel("factor by which reversing the ranking changed the class's captions")
        right.set_ylabel("accuracy change (reversed − Zipf organism)")
        right.set_title("Reversed Zipf ranking: does accuracy follow?", fontsize=10)
    fig.suptitle("Frequency intervention on the organism")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _label_points(ax: Any, names: list[str], xs: list[float], ys: list[float]) -> None:
    for name, x, y in zip(names, xs, ys, strict=True):
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")


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
        *draw_encoder_vs_llm(result, folder / "encoder_vs_llm.png"),
    ]


def draw_encoder_vs_llm(result: dict[str, Any], out: Path) -> list[Path]:
    """Finding 6's encoder and LLM effects on the tops and the rest (``attribute``'s figure);
    none for a demo stored before the grid existed."""
    from vlmclf.analysis.attribute import plot_attribution

    finding = next((f for f in result["findings"] if f["id"] == "6"), None)
    if finding is None:
        return []
    return [plot_attribution(finding["details"]["attribute"], out)]


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
        f"Fashion-MNIST test split: CLIP on {sizes['n_clip']} images, every VLM method and the "
        f"probe on {sizes['n_vlm']} of them; comparisons are paired on the images both "
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
    return page_html(store_path, views, kept, lead_html(result), table_above=analysis_id)
