"""Training-data frequency analysis: corpus readers, normalisation, fast vs naive count, stats."""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

import pytest

from vlmclf.analysis.frequency import corpus
from vlmclf.analysis.frequency.corpus import (
    ReadStats,
    detect_format,
    iter_units,
    synthetic_captions,
)
from vlmclf.analysis.frequency.run import (
    ClassMatcher,
    binned_accuracy,
    class_name_variants,
    correlate,
    count_class_mentions,
    naive_count,
    plot_frequency_vs_accuracy,
    run_frequency_analysis,
    tokenize,
    write_frequency_table,
)

IMAGENET = Path(__file__).resolve().parents[1] / "src/vlmclf/data/classnames/imagenet.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _llava_records() -> list[dict]:
    return [
        {
            "id": "1",
            "image": "a.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat animal is this?"},
                {"from": "gpt", "value": "A tiger cat on a sofa."},
            ],
        },
        {"id": "2", "conversations": [{"from": "human", "value": "Describe it <image>"}]},
    ]


# ---------------------------------------------------------------- readers


@pytest.mark.parametrize("name", ["c.txt", "c.txt.gz"])
def test_text_reader_yields_non_blank_lines(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, "a tiger cat\r\n\n  \nsecond line\nlast")
    assert list(iter_units(path)) == ["a tiger cat", "second line", "last"]


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz"])
def test_jsonl_default_fields_and_lists(tmp_path: Path, name: str) -> None:
    lines = [
        json.dumps({"caption": "one"}),
        json.dumps({"text": "two"}),
        "",
        json.dumps({"caption": ["three", "four"]}),
        json.dumps({"conversations": _llava_records()[0]["conversations"]}),
    ]
    path = _write(tmp_path / name, "\n".join(lines) + "\n")
    assert list(iter_units(path)) == [
        "one",
        "two",
        "three",
        "four",
        " \nWhat animal is this?",
        "A tiger cat on a sofa.",
    ]


def test_jsonl_dotted_field(tmp_path: Path) -> None:
    lines = [{"meta": {"alt": ["x", "first"]}}, {"meta": {"alt": ["y", "second"]}}]
    path = _write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in lines))
    assert list(iter_units(path, field="meta.alt.1")) == ["first", "second"]
    assert list(iter_units(path, field="meta.alt")) == ["x", "first", "y", "second"]


def test_jsonl_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.jsonl", '{"caption": "ok"}\n{"caption": "ok"}\n{"caption": oops\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:3: invalid JSON"):
        list(iter_units(path))


def test_jsonl_missing_field_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.jsonl", '{"caption": "ok"}\n{"url": "x"}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: no 'conversations', 'caption'"):
        list(iter_units(path))
    with pytest.raises(ValueError, match=r"c\.jsonl:1: no string .* field 'alt'"):
        list(iter_units(path, field="alt"))


def test_jsonl_skip_bad_counts_skipped_records(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.jsonl", '{"caption": "a"}\nnot json\n{"x": 1}\n{"caption": "b"}\n')
    stats = ReadStats()
    assert list(iter_units(path, skip_bad=True, stats=stats)) == ["a", "b"]
    assert stats.n_bad == 2
    result = count_class_mentions([path], ["a", "b"], skip_bad=True)
    assert (result.n_units, result.n_bad, result.counts) == (2, 2, {"a": 1, "b": 1})


@pytest.mark.parametrize("name", ["llava.json", "llava.json.gz"])
def test_llava_json_turns_are_units_without_image_token(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, json.dumps(_llava_records(), indent=2))
    units = list(iter_units(path))
    assert len(units) == 3
    assert all("<image>" not in u for u in units)
    assert [u.strip() for u in units] == [
        "What animal is this?",
        "A tiger cat on a sofa.",
        "Describe it",
    ]


def test_json_array_streams_across_small_chunks(tmp_path: Path, monkeypatch) -> None:
    records = [{"caption": f"caption number {i} " + "x" * (i % 13)} for i in range(300)]
    records += [{"caption": ["é ünïcode", "12345"]}, "a bare string"]
    path = _write(tmp_path / "c.json", json.dumps(records, indent=1, ensure_ascii=False))
    monkeypatch.setattr(corpus, "_CHUNK_CHARS", 7)
    units = list(iter_units(path))
    expected = [r["caption"] for r in records[:300]] + ["é ünïcode", "12345", "a bare string"]
    assert units == expected
    assert list(iter_units(_write(tmp_path / "e.json", " [ ] "))) == []


def test_json_array_errors_name_file_and_line(tmp_path: Path) -> None:
    broken = _write(tmp_path / "b.json", '[\n{"caption": "a"},\n{"caption": b}\n]')
    with pytest.raises(ValueError, match=r"b\.json:3: invalid JSON"):
        list(iter_units(broken))
    not_array = _write(tmp_path / "o.json", '{"caption": "a"}')
    with pytest.raises(ValueError, match="expected a JSON array"):
        list(iter_units(not_array))
    no_field = _write(tmp_path / "f.json", '[{"caption": "a"},\n {"id": 3}]')
    with pytest.raises(ValueError, match=r"f\.json:2 \(element 1\): no 'conversations'"):
        list(iter_units(no_field))


@pytest.mark.parametrize("name,delimiter", [("c.csv", ","), ("c.csv.gz", ","), ("c.tsv", "\t")])
def test_csv_column(tmp_path: Path, name: str, delimiter: str) -> None:
    path = tmp_path / name
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerows(
            [["url", "caption", "alt"], ["u1", "a, quoted\nline", "z"], ["u2", "b", "y"]]
        )
    assert list(iter_units(path)) == ["a, quoted\nline", "b"]
    assert list(iter_units(path, field="alt")) == ["z", "y"]
    with pytest.raises(ValueError, match=r"c\.(csv|tsv)(\.gz)?:1: no column 'nope'"):
        list(iter_units(path, field="nope"))


def test_format_detection_and_override(tmp_path: Path) -> None:
    assert detect_format("a/b.JSONL.gz") == "jsonl"
    assert detect_format("x.ndjson") == "jsonl"
    assert detect_format("x.txt") == "text"
    path = _write(tmp_path / "corpus.dat", '{"caption": "a tench"}\n')
    with pytest.raises(ValueError, match=r"corpus\.dat: cannot tell the corpus format"):
        list(iter_units(path))
    assert list(iter_units(path, fmt="jsonl")) == ["a tench"]
    assert list(iter_units(path, fmt="text")) == ['{"caption": "a tench"}']
    with pytest.raises(ValueError, match="unknown corpus format"):
        list(iter_units(path, fmt="xml"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        count_class_mentions([tmp_path / "missing.txt"], ["a"])


# ---------------------------------------------------------------- normalisation and matching


def test_tokenize_and_class_variants() -> None:
    assert tokenize("A T-Shirt's ＦＵＬＬ-width, St.Bernard_x 2nd") == [
        "a", "t", "shirt", "s", "full", "width", "st", "bernard", "x", "2nd",
    ]  # fmt: skip
    assert class_name_variants("T-shirt/top") == [("t", "shirt"), ("top",)]
    assert class_name_variants("kite (bird of prey)") == [("kite",)]
    assert class_name_variants("baluster / handrail") == [("baluster",), ("handrail",)]
    assert class_name_variants("(only parenthesised)") == [("only", "parenthesised")]
    with pytest.raises(ValueError, match="no letters or digits"):
        class_name_variants("--")


def test_hand_counted_corpus() -> None:
    names = ["cat", "tiger cat", "T-shirt/top", "potter's wheel", "St. Bernard", "tiger", "cat"]
    units = [
        "A cat, a CAT and a Tiger-Cat.",  # cat once, tiger cat, tiger
        "t shirt on top of a T-SHIRT",  # T-shirt/top once although three mentions
        "the potter's wheel; a potters wheel",  # potter's wheel once ("potters" does not match)
        "st bernard / saint bernard",
        "tigercat catalogue cats",  # no whole-token match at all
    ]
    expected = {
        "cat": 1,
        "tiger cat": 1,
        "T-shirt/top": 1,
        "potter's wheel": 1,
        "St. Bernard": 1,
        "tiger": 1,
    }
    assert naive_count(units, names) == expected
    matcher = ClassMatcher(names)
    matcher.add_units(units)
    assert matcher.as_dict() == expected
    assert matcher.n_units == len(units)
    assert list(matcher.as_dict()) == list(expected)  # duplicates once, order kept


def _random_corpus(rng: random.Random, n: int) -> list[str]:
    pieces = ["tiger", "cat", "Cat", "white", "shark", "great", "a", "b", "t", "shirt", "T-shirt",
              "top", "potter's", "wheel", "ÉCLAIR", "éclair", "ｃａｔ", "st", "Bernard", "x", "y",
              "z", "_", "cat_cat", "42", "\x00"]  # fmt: skip
    punct = ["", "", " ", ",", ".", "-", "/", "'", "(", ")", "!", "\n", "  "]
    units = []
    for _ in range(n):
        k = rng.randint(0, 12)
        units.append("".join(rng.choice(pieces) + rng.choice(punct) + " " * rng.randint(0, 1)
                             for _ in range(k)))  # fmt: skip
    return units


def test_fast_counts_equal_naive_on_random_corpus(tmp_path: Path) -> None:
    rng = random.Random(7)
    names = ["cat", "tiger cat", "tiger", "great white shark", "white shark", "shark",
             "T-shirt/top", "potter's wheel", "a b a", "b a", "a", "éclair", "St. Bernard",
             "x y x y", "x y", "42", "cat cat"]  # fmt: skip
    units = _random_corpus(rng, 3000)
    expected = naive_count(units, names)
    assert sum(expected.values()) > 1000  # the corpus really exercises the names
    for batch_units in (1, 7, 5000):
        matcher = ClassMatcher(names)
        matcher.add_units(units, batch_units=batch_units)
        assert matcher.as_dict() == expected, batch_units
    path = tmp_path / "random.jsonl"
    path.write_text("\n".join(json.dumps({"text": u}) for u in units), encoding="utf-8")
    result = count_class_mentions([path], names)
    assert result.counts == expected
    assert (result.n_units, result.sources) == (len(units), [str(path)])


def test_fast_equals_naive_on_imagenet_synthetic_captions() -> None:
    names = json.loads(IMAGENET.read_text(encoding="utf-8"))
    captions = list(synthetic_captions(300, names, seed=3))
    matcher = ClassMatcher(names)
    matcher.add_units(captions)
    expected = naive_count(captions, names)
    assert sum(expected.values()) > 100
    assert matcher.as_dict() == expected
    assert len(expected) == len(set(names)) == 998


def test_counts_over_several_files_and_formats(tmp_path: Path) -> None:
    txt = _write(tmp_path / "a.txt.gz", "a tench\nno fish here\n")
    llava = _write(tmp_path / "b.json", json.dumps(_llava_records()))
    result = count_class_mentions([txt, llava], ["tench", "tiger cat", "cat", "goldfish"])
    assert result.counts == {"tench": 1, "tiger cat": 1, "cat": 1, "goldfish": 0}
    assert result.n_units == 5


# ---------------------------------------------------------------- statistics and outputs


def test_correlate_monotone_case() -> None:
    names = [f"c{i}" for i in range(30)]
    counts = {n: 2**i for i, n in enumerate(names)}
    accuracy = {n: i / 30 + 0.01 * (i % 2) for i, n in enumerate(names)}  # monotone, not linear
    result = correlate(counts, accuracy, n_boot=200, seed=1)
    assert result["spearman"] == pytest.approx(1.0)
    assert result["spearman_p"] < 1e-6
    assert result["n_classes"] == 30
    assert result["spearman_ci95"][1] == pytest.approx(1.0)
    assert 0.95 < result["pearson_log1p"] < 1.0
    lo, hi = result["pearson_log1p_ci95"]
    assert lo <= result["pearson_log1p"] <= hi
    json.dumps(result)
    reversed_acc = {n: -a for n, a in accuracy.items()}
    assert correlate(counts, reversed_acc, n_boot=50)["spearman"] == pytest.approx(-1.0)


def test_correlate_degenerate_inputs() -> None:
    flat = correlate({"a": 1, "b": 1, "c": 1}, {"a": 0.1, "b": 0.5, "c": 0.9}, n_boot=20)
    assert flat["spearman"] is None and flat["pearson_log1p_ci95"] is None
    json.dumps(flat)
    with pytest.raises(ValueError, match="at least 3 classes"):
        correlate({"a": 1, "b": 2}, {"a": 0.1, "x": 0.2})


def test_binned_accuracy_quantile_and_log() -> None:
    counts = {f"c{i}": (0 if i < 15 else i * i) for i in range(40)}
    accuracy = {n: min(1.0, c / 1600) for n, c in counts.items()}
    bins = binned_accuracy(counts, accuracy, n_bins=4)
    assert [b["n_classes"] for b in bins] == [15, 5, 10, 10]  # the 15 ties stay together
    assert bins[0]["lo"] == bins[0]["hi"] == 0
    assert all(a["hi"] < b["lo"] for a, b in zip(bins, bins[1:], strict=False))
    means = [b["mean_accuracy"] for b in bins]
    assert means == sorted(means)
    log_bins = binned_accuracy(counts, accuracy, n_bins=5, scheme="log")
    assert sum(b["n_classes"] for b in log_bins) == 40
    with pytest.raises(ValueError, match="unknown binning scheme"):
        binned_accuracy(counts, accuracy, scheme="linear")


def test_plot_and_tables(tmp_path: Path) -> None:
    counts = {"tench": 5, "goldfish": 50, "a|b": 0, "shark": 500}
    accuracy = {"tench": 0.2, "goldfish": 0.5, "a|b": 0.1, "shark": 0.9}
    png = plot_frequency_vs_accuracy(binned_accuracy(counts, accuracy, 3), tmp_path / "p.png", "t")
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 1000
    write_frequency_table(counts, accuracy, tmp_path / "t.md", tmp_path / "t.csv")
    rows = list(csv.reader((tmp_path / "t.csv").open(encoding="utf-8")))
    assert rows[0] == ["class", "count", "accuracy"]
    assert [r[0] for r in rows[1:]] == ["shark", "goldfish", "tench", "a|b"]
    assert rows[1][1:] == ["500", "0.9"]
    md = (tmp_path / "t.md").read_text(encoding="utf-8").splitlines()
    assert md[2] == "| shark | 500 | 0.9000 |" and md[-1] == "| a\\|b | 0 | 0.1000 |"
    write_frequency_table(counts, None, tmp_path / "n.md", tmp_path / "n.csv")
    assert (tmp_path / "n.csv").read_text(encoding="utf-8").splitlines()[1] == "shark,500,"


def test_run_frequency_analysis_end_to_end(tmp_path: Path) -> None:
    names = ["tench", "goldfish", "great white shark", "shark", "tiger cat"]
    lines = ["a tench"] * 3 + ["goldfish and a shark"] * 6 + ["great white shark"] * 9 + ["x"]
    path = _write(tmp_path / "c.txt", "\n".join(lines))
    accuracy = {"tench": 0.3, "goldfish": 0.5, "great white shark": 0.7, "shark": 0.9,
                "tiger cat": 0.1}  # fmt: skip
    out = run_frequency_analysis([path], names, tmp_path / "out", per_class_accuracy=accuracy)
    assert out["counts"] == {"tench": 3, "goldfish": 6, "great white shark": 9, "shark": 15,
                             "tiger cat": 0}  # fmt: skip
    assert out["n_units"] == 19
    assert out["correlation"]["spearman"] == pytest.approx(1.0)
    for key in ("table_md", "table_csv", "plot_png", "json"):
        assert Path(out["files"][key]).is_file()
    assert json.loads(Path(out["files"]["json"]).read_text())["counts"] == out["counts"]
    bare = run_frequency_analysis([path], names, tmp_path / "bare")
    assert bare["correlation"] is None and bare["files"]["plot_png"] is None
    json.dumps(bare)


def test_paper_bins_and_raw_pearson_follow_the_papers_notebook() -> None:
    rng = random.Random(3)
    counts = {f"c{i}": rng.choice([0, 5, 10, 19, 55, 99, 100, 999, 1000, 50000, 100000, 250000])
              for i in range(60)}  # fmt: skip
    accuracy = {name: rng.random() for name in counts}
    bins = binned_accuracy(counts, accuracy, scheme="paper")
    # The paper's loop (data_analysis/correlation.ipynb), written out: [lo, hi) over fixed edges.
    edges = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 1000, 10000, 100000]
    members: list[list[float]] = [[] for _ in range(len(edges) - 1)]
    for name, x in counts.items():
        for i in range(len(edges) - 1):
            if edges[i] <= x < edges[i + 1]:
                members[i].append(accuracy[name])
                break
    want = [(i, m) for i, m in enumerate(members) if m]
    assert [b["edges"] for b in bins] == [[edges[i], edges[i + 1]] for i, _ in want]
    assert [b["n_classes"] for b in bins] == [len(m) for _, m in want]
    for b, (_, m) in zip(bins, want, strict=True):
        assert b["mean_accuracy"] == pytest.approx(sum(m) / len(m))
    assert sum(b["n_classes"] for b in bins) < len(counts)  # 100000 and above: in no bin
    result = correlate(counts, accuracy)
    xs = [float(counts[n]) for n in counts]
    ys = [accuracy[n] for n in counts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    norm = (sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys)) ** 0.5
    assert result["pearson_raw"] == pytest.approx(cov / norm)
    assert result["pearson_raw"] != pytest.approx(result["pearson_log1p"])
    lo, hi = result["pearson_raw_ci95"]
    assert lo <= result["pearson_raw"] <= hi
    with pytest.raises(ValueError, match="quantile, log, paper"):
        binned_accuracy(counts, accuracy, scheme="fixed")


def test_frequency_command_bins_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vlmclf.cli import app

    path = _write(tmp_path / "c.txt", "a tench\nthe goldfish\ngoldfish\n")
    args = ["frequency", "--corpus", str(path), "--classes", "imagenet", "--out", str(tmp_path),
            "--store", str(tmp_path / "s.sqlite")]  # fmt: skip
    bad = CliRunner().invoke(app, [*args, "--bins", "linear"])
    assert bad.exit_code != 0 and "--bins must be one of quantile, log, paper" in bad.output


@pytest.mark.slow
def test_million_captions_by_998_imagenet_names(tmp_path: Path) -> None:
    """1,000,000 captions x 998 names through the file path (one pass, must take < 60 s).

    2,000 distinct synthetic captions are each repeated 500 times in a shuffled order, so the
    expected counts are 500 x the naive counts of the distinct captions.
    """
    names = json.loads(IMAGENET.read_text(encoding="utf-8"))
    distinct = [c.replace("\n", " ") for c in synthetic_captions(2000, names, seed=11)]
    order = [i for i in range(len(distinct)) for _ in range(500)]
    random.Random(0).shuffle(order)
    path = tmp_path / "million.txt"
    with path.open("w", encoding="utf-8") as fh:
        fh.writelines(distinct[i] + "\n" for i in order)
    result = run_frequency_analysis([path], names, tmp_path / "out")
    expected = {name: 500 * c for name, c in naive_count(distinct, names).items()}
    assert result["n_units"] == 1_000_000
    assert result["counts"] == expected


def test_frequency_output_path_writes_the_analysis_results(tmp_path: Path) -> None:
    import sys

    from typer.testing import CliRunner

    from vlmclf.cli import app

    path = _write(tmp_path / "c.txt", "a tench\nthe goldfish\ngoldfish\n")
    out = tmp_path / "files"
    args = ["frequency", "--corpus", str(path), "--classes", "imagenet", "--out",
            str(tmp_path / "report"), "--store", str(tmp_path / "s.sqlite"), "--json",
            "--output-path", str(out)]  # fmt: skip
    had_torch = "torch" in sys.modules
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    analysis_id = payload["analysis_id"]
    assert [p.name for p in out.iterdir()] == [f"results_{analysis_id}.json"]
    results = json.loads((out / f"results_{analysis_id}.json").read_text())
    assert results["kind"] == "frequency" and results["status"] == "done"
    assert results["summary"]["counts"] == payload["counts"]
    assert results["summary"]["counts"]["goldfish"] == 2
    assert results["identity"] == {"kind": "frequency", "spec": {
        "corpus": [str(path)], "classes": "imagenet", "run": None, "field": None}}
    assert results["protocol"] == {"bins": "quantile"}
    assert results["versions"]["vlmclf"] and results["versions"]["python"]
    assert results["threads"] is None  # counted without torch: no thread count to record
    assert had_torch or "torch" not in sys.modules  # and the files did not import it
    bad = CliRunner().invoke(app, [*args[:-2], "--output-path", str(path / "sub")])
    assert bad.exit_code == 2 and bad.output.startswith(f"error: --output-path {path / 'sub'}")
