"""Why an open-world answer misses: its error type against a class hierarchy (``vlmclf errors``).

The paper's containment rule reads "dog" for a golden retriever as simply wrong. Against a
hierarchy (``data/hierarchy.py``) each answer is one of

* ``exact``: it names the true class;
* ``coarser``: an ancestor of it ("dog", "retriever");
* ``finer``: a descendant of it;
* ``sibling``: another child of the true class's parent ("Labrador retriever");
* ``other_class``: some other node of the hierarchy;
* ``no_class``: no node at all (or no text).

The answer's node is found as the strict mapping finds a label (``methods/matching.py``: the
longest node name at word boundaries, the earliest on a tie). A name that several nodes carry
(WordNet's "crane" the bird and the machine) takes the type closest to the truth. Beside the
types: the accuracy at the parent level (the answer names the true class's parent or anything
under it), how many levels up the coarser answers are, and the semantic similarity between
answer and label (cosine of all-MiniLM-L6-v2 sentence embeddings), each with a bootstrap
interval over the answers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from vlmclf.data.hierarchy import (
    WORDNET_DIR,
    Hierarchy,
    aircraft_hierarchy,
    load_hierarchy_file,
    read_aircraft_levels,
    wnids_for_classes,
    wordnet_hierarchy,
)
from vlmclf.methods.matching import match_label
from vlmclf.metrics.classification import bootstrap_ci
from vlmclf.store import RunStore

ERROR_TYPES = ("exact", "coarser", "finer", "sibling", "other_class", "no_class")
"""In the order of closeness to the truth (a name on several nodes takes the first that fits)."""


@dataclass(frozen=True)
class Relatives:
    """What lies around one true class node."""

    ancestors: dict[str, int]
    descendants: frozenset[str]
    siblings: frozenset[str]
    parent_subtree: frozenset[str]


class ErrorTyper:
    """Types answers against one hierarchy; the relatives of each class are found once."""

    def __init__(self, hierarchy: Hierarchy):
        self.hierarchy = hierarchy
        self._nodes_of = hierarchy.name_index()
        self._names = sorted(self._nodes_of)
        self._by_first_word = _first_word_index(self._names)
        self._relatives = cache(self._find_relatives)

    def _find_relatives(self, node: str) -> Relatives:
        h = self.hierarchy
        ancestors = h.ancestors(node)
        parents = [p for p, depth in ancestors.items() if depth == 1]
        subtree = {node, *parents, *(d for p in parents for d in h.descendants(p))}
        return Relatives(ancestors, frozenset(h.descendants(node)), frozenset(h.siblings(node)),
                         frozenset(subtree))  # fmt: skip

    def answer_nodes(self, text: str | None) -> list[str]:
        """The nodes the answer names (one name, possibly on several nodes), or []."""
        if not text or not text.strip():
            return []
        words = set(_WORD.findall(text.lower()))
        candidates = sorted({i for w in words for i in self._by_first_word.get(w, ())}
                            | set(self._by_first_word.get("", ())))  # fmt: skip
        found = match_label(text, self._names, candidates)
        return [] if found is None else self._nodes_of[self._names[found]]

    def classify(self, text: str | None, label: int) -> tuple[str, int | None, bool]:
        """(type, levels up for ``coarser``, whether the answer is right at the parent level)."""
        nodes = self.answer_nodes(text)
        true = self.hierarchy.class_nodes[label]
        if not nodes:
            return "no_class", None, False
        if true is None:
            return "other_class", None, False
        around = self._relatives(true)
        at_parent = any(n in around.parent_subtree for n in nodes)
        if true in nodes:
            return "exact", None, True
        levels = [around.ancestors[n] for n in nodes if n in around.ancestors]
        if levels:
            return "coarser", min(levels), at_parent
        if any(n in around.descendants for n in nodes):
            return "finer", None, True
        if any(n in around.siblings for n in nodes):
            return "sibling", None, at_parent
        return "other_class", None, at_parent


_WORD = re.compile(r"\w+")


def _first_word_index(names: Sequence[str]) -> dict[str, list[int]]:
    """First word of each name -> the names' indices ("" for a name with no word). A name found
    at word boundaries in a text starts with a whole word of that text, so only names whose
    first word the text holds need the full search: thousands of WordNet names shrink to a few
    per answer, with the same result."""
    index: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        first = _WORD.search(name.lower())
        index.setdefault(first.group() if first else "", []).append(i)
    return index


def classify_answers(
    typer: ErrorTyper, texts: Sequence[str | None], labels: Sequence[int]
) -> list[tuple[str, int | None, bool]]:
    """:meth:`ErrorTyper.classify` for many answers; repeated (answer, label) pairs are typed
    once (open-world answers repeat a lot)."""
    seen: dict[tuple[str | None, int], tuple[str, int | None, bool]] = {}
    out = []
    for text, label in zip(texts, labels, strict=True):
        key = (text, label)
        if key not in seen:
            seen[key] = typer.classify(text, label)
        out.append(seen[key])
    return out


def answer_label_similarity(
    encoder: Any, texts: Sequence[str | None], label_names: Sequence[str]
) -> np.ndarray:
    """Cosine similarity of each answer's sentence embedding with its label name's; an empty
    answer scores 0."""
    distinct = sorted({t for t in texts if t and t.strip()} | set(label_names))
    vectors = encoder.encode(distinct, batch_size=64, convert_to_numpy=True,
                             normalize_embeddings=True, show_progress_bar=False)  # fmt: skip
    row = {text: i for i, text in enumerate(distinct)}
    vectors = np.asarray(vectors, dtype=np.float64)
    return np.array([
        float(vectors[row[t]] @ vectors[row[name]]) if t and t.strip() else 0.0
        for t, name in zip(texts, label_names, strict=True)
    ])  # fmt: skip


def hierarchy_for_run(
    class_names: Sequence[str], hierarchy: str | Path | None = None,
    wordnet_dir: str | Path = WORDNET_DIR,
) -> Hierarchy:  # fmt: skip
    """The hierarchy to type a run's answers with: ``hierarchy`` (a JSON child -> parent file,
    or FGVC-Aircraft's ``data/`` folder), else WordNet when the classes are ImageNet's."""
    if hierarchy is not None:
        path = Path(hierarchy)
        if path.is_dir():
            return aircraft_hierarchy(*read_aircraft_levels(path), class_names)
        return load_hierarchy_file(path, class_names)
    wnids = wnids_for_classes(class_names)
    if wnids is None:
        raise ValueError(
            f"no hierarchy is known for these {len(class_names)} classes (not ImageNet's): pass "
            "--hierarchy FILE (a JSON object child -> parent) or FGVC-Aircraft's data folder"
        )
    return wordnet_hierarchy(wnids, class_names, wordnet_dir)


def error_types(
    store: RunStore,
    run_id: str,
    hierarchy: Hierarchy,
    *,
    encoder: Any | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Type every answer of a generation run, summarize, and store the result (kind
    ``errors``). ``encoder`` (a sentence-transformers model) adds the similarity summary.
    Answers only: data failures are the dataset's and are not typed."""
    record = store.get_run(run_id)
    if record is None:
        raise ValueError(f"no run {run_id!r} in {store.path} (see `vlmclf results`)")
    if record.spec.get("method") != "generate":
        raise ValueError(f"run {run_id} used --method {record.spec.get('method')}: only "
                         "generation runs have open-world answers to type")  # fmt: skip
    if len(hierarchy.class_nodes) != len(record.class_names):
        raise ValueError(f"the hierarchy covers {len(hierarchy.class_nodes)} classes but run "
                         f"{run_id} has {len(record.class_names)}")  # fmt: skip
    texts, labels = _answers(store, run_id)
    if not texts:
        raise ValueError(f"run {run_id} has no answers to type")
    typed = classify_answers(ErrorTyper(hierarchy), texts, labels)
    result = summarize_types(typed, n_boot=n_boot, seed=seed)
    if encoder is not None:
        sims = answer_label_similarity(encoder, texts, [record.class_names[i] for i in labels])
        result["similarity"] = summarize_similarity(sims, [t for t, _, _ in typed], n_boot, seed)
    result = {"run_id": run_id, **result, "hierarchy": hierarchy.source,
              "model": record.spec.get("model"), "dataset": record.spec.get("dataset")}  # fmt: skip
    key = {"run": run_id, "hierarchy": hierarchy.source, "similarity": encoder is not None}
    result["analysis_id"] = store.save_analysis("errors", key, result)
    return result


def _answers(store: RunStore, run_id: str) -> tuple[list[str | None], list[int]]:
    texts: list[str | None] = []
    labels: list[int] = []
    for chunk in store.prediction_chunks(run_id, arrays=False):
        for p in chunk:
            if p.outcome == "answer":
                texts.append(p.text)
                labels.append(p.label)
    return texts, labels


def summarize_types(
    typed: Sequence[tuple[str, int | None, bool]], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Counts and shares (with bootstrap intervals) of each type, the coarser answers by levels
    up, and the accuracy at the parent level."""
    kinds = [kind for kind, _, _ in typed]
    counts = Counter(kinds)
    shares = {}
    for kind in ERROR_TYPES:
        flags = [float(k == kind) for k in kinds]
        ci = list(bootstrap_ci(flags, n_boot, seed))
        shares[kind] = {"share": float(np.mean(flags)), "ci": ci}
    at_parent = [float(ok) for _, _, ok in typed]
    levels = Counter(level for kind, level, _ in typed if kind == "coarser")
    return {
        "n": len(typed),
        "types": {kind: counts.get(kind, 0) for kind in ERROR_TYPES},
        "shares": shares,
        "coarser_levels": {str(level): n for level, n in sorted(levels.items())},
        "parent_accuracy": {"value": float(np.mean(at_parent)),
                            "ci": list(bootstrap_ci(at_parent, n_boot, seed))},
    }  # fmt: skip


def summarize_similarity(
    sims: np.ndarray, kinds: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The distribution of answer-label similarity: mean with its bootstrap interval, the
    quartiles, a 10-bin histogram over [-1, 1] and the mean within each type."""
    by_type = {}
    for kind in ERROR_TYPES:
        mask = np.array([k == kind for k in kinds])
        by_type[kind] = float(sims[mask].mean()) if mask.any() else None
    counts, edges = np.histogram(np.clip(sims, -1, 1), bins=10, range=(-1, 1))
    return {
        "mean": float(sims.mean()), "ci": list(bootstrap_ci(sims.tolist(), n_boot, seed)),
        "quartiles": [float(q) for q in np.quantile(sims, [0.25, 0.5, 0.75])],
        "histogram": {"edges": [float(e) for e in edges], "counts": counts.tolist()},
        "by_type": by_type,
    }  # fmt: skip


def error_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline table: one row per type (count, share and its interval, similarity)."""
    sim = (result.get("similarity") or {}).get("by_type", {})
    return [
        {"type": kind, "count": result["types"][kind], "share": result["shares"][kind]["share"],
         "ci_low": result["shares"][kind]["ci"][0], "ci_high": result["shares"][kind]["ci"][1],
         "similarity": sim.get(kind)}
        for kind in ERROR_TYPES
    ]  # fmt: skip


_COLORS = {"exact": "#2a9d8f", "coarser": "#8ab17d", "finer": "#e9c46a", "sibling": "#f4a261",
           "other_class": "#e76f51", "no_class": "#9e9e9e"}  # fmt: skip


def plot_error_types(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """One stacked horizontal bar per run: the share of each error type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.8 + 0.4 * len(results)))
    labels = [f"{r.get('model') or ''} {r['run_id'][:8]}".strip() for r in results]
    left = np.zeros(len(results))
    for kind in ERROR_TYPES:
        widths = np.array([r["shares"][kind]["share"] for r in results])
        ax.barh(labels, widths, left=left, color=_COLORS[kind], label=kind)
        left += widths
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of answers")
    ax.set_title("Open-world error types")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
