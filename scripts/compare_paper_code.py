"""Run the paper's published scripts and ``vlmclf ... --protocol paper`` on the same tiny LLaVA-1.5
and the same 30 Fashion-MNIST test images, and count where they agree.

    python scripts/compare_paper_code.py --paper-repo DIR [--work /tmp/paper-vs-vlmclf]

``DIR`` is a checkout (or a bare git directory) of yuhui-zh15/VLMClassifier. Its scripts are run
as published, with only what cannot run offline on a CPU edited out: ``device_map="auto"`` and
``.to("cuda")`` (the model stays on the CPU), the ``clip``/``torchvision`` imports of
``main_results/main.py`` (their branches are not run), and the dtype, given as ``dtype=`` so
float32 can be compared exactly (``--dtype bfloat16`` compares the published dtype).

Compared: probe features (feature_analysis/extract_feature.py; batch 4, since with a batch that
divides the data its last file is never written), open- and closed-world answers, offered labels
and hits (main_results/main.py, K=5), and ImageWikiQA answers and letters (imagewikiqa/main.py;
the letter by the eval notebook's own parser, its code cells executed from the checkout).
None of their code is kept in this repository; scripts/record_paper_outputs.py records what it
outputs on the tests' inputs (tests/fixtures/paper_outputs.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import torch

SCRIPTS = {
    "extract_feature.py": "feature_analysis/extract_feature.py",
    "main.py": "main_results/main.py",
    "wikiqa_main.py": "imagewikiqa/main.py",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]  # fmt: skip


def read_script(repo: Path, path: str) -> str:
    if (repo / path).is_file():
        return (repo / path).read_text()
    return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True).stdout  # fmt: skip


def offline(source: str) -> str:
    """The script with its CUDA placement and unused GPU-only imports edited out."""
    source = source.replace(', device_map="auto", torch_dtype=torch.bfloat16', ", dtype=DTYPE")
    source = source.replace('.to("cuda")', "")
    source = re.sub(r"^(import clip|from torchvision.*)$", r"# \1  (unused offline)", source,
                    flags=re.M)  # fmt: skip
    header = 'import os, torch\nDTYPE = getattr(torch, os.environ["PAPER_DTYPE"])\n'
    return header + source


def run(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{done.stderr[-3000:]}")
    return done.stdout


def vlmclf(*args: str) -> dict:
    out = run(sys.executable, "-m", "vlmclf", *args, "--json", "--no-progress")
    return json.loads(out.strip().splitlines()[-1])


def prepare(work: Path) -> tuple[Path, Path, Path]:
    """(saved tiny LLaVA, relative manifest of 30 images, the same with absolute paths)."""
    from vlmclf.data.idx import FASHION_MNIST_ROOT
    from vlmclf.models.random_models import save_random_model

    model = save_random_model("llava", work / "llava")
    run(sys.executable, "-m", "vlmclf", "data", "manifest", "--dataset", "fashion_mnist",
        "--data-root", str(FASHION_MNIST_ROOT), "--split", "test", "--out-file",
        str(work / "fm" / "all.jsonl"))
    lines = (work / "fm" / "all.jsonl").read_text().splitlines()[:30]
    relative = work / "fm" / "fm30.jsonl"
    relative.write_text("\n".join(lines) + "\n")
    absolute = work / "fm" / "paper30.jsonl"
    rows = [json.loads(line) for line in lines]
    absolute.write_text("".join(
        json.dumps({**row, "image": str(work / "fm" / row["image"])}) + "\n" for row in rows
    ))  # fmt: skip
    (work / "fm" / "classes.json").write_text(json.dumps(CLASSES))
    return model, relative, absolute


def compare_features(work: Path, model: Path, relative: Path, absolute: Path, env: dict) -> str:
    from vlmclf.analysis.probe.features import load_feature_file

    out = work / "paper_features"
    run(sys.executable, str(work / "extract_feature.py"), "--model_id", str(model), "--data_path",
        str(absolute), "--class_path", str(work / "fm" / "classes.json"), "--output_path",
        str(out), "--batch_size", "4", env=env)  # fmt: skip
    paper = torch.cat([torch.load(f"{out}_{i}.pt") for i in (0, 1)]).float()
    rows = [json.loads(line) for line in absolute.read_text().splitlines()]
    random.seed(1234)
    random.shuffle(rows)
    result = vlmclf("probe", "--model", f"hf:{model}", "--dataset", str(relative), "--train-split",
                    "test", "--protocol", "paper", "--dtype", env["PAPER_DTYPE"], "--epochs", "1",
                    "--batch-size", "4", "--store", str(work / "runs.sqlite"), "--cache-dir",
                    str(work / "features"), "--out", str(work / "probe"))  # fmt: skip
    ours = load_feature_file(Path(result["cache_files"][1]))
    index = {example_id: n for n, example_id in enumerate(ours.ids)}
    order = [index[os.path.relpath(row["image"], relative.parent)] for row in rows]
    last = (ours.features["last_token"][order] - paper[:, 0]).abs().max().item()
    mean = (ours.features["mean"][order] - paper[:, 1]).abs().max().item()
    return f"probe features: max |difference| last token {last:.3g}, mean {mean:.3g}"


def compare_generation(work: Path, model: Path, absolute: Path, env: dict, closed: bool) -> str:
    out = work / ("paper_closed.jsonl" if closed else "paper_open.jsonl")
    out.unlink(missing_ok=True)
    extra = ["--including_label", "True", "--n_labels", "5"] if closed else []
    run(sys.executable, str(work / "main.py"), "--model_id", str(model), "--data_path",
        str(absolute), "--class_path", str(work / "fm" / "classes.json"), "--split", "test",
        "--output_path", str(out), *extra, env=env)  # fmt: skip
    paper = {row["image"]: row for row in map(json.loads, out.read_text().splitlines())}
    setting = ["--setting", "closed", "--k", "5"] if closed else []
    result = vlmclf("eval", "--model", f"hf:{model}", "--dataset", str(absolute), "--split",
                    "test", "--method", "generate", "--protocol", "paper", "--dtype",
                    env["PAPER_DTYPE"], "--store", str(work / "runs.sqlite"), *setting)  # fmt: skip
    from vlmclf.store import RunStore

    with RunStore(work / "runs.sqlite", read_only=True) as store:
        ours = store.predictions(result["run_id"])
    names = sorted(CLASSES)
    texts = sum(paper[p.example_id]["pred"] == p.text for p in ours)
    hits = sum((paper[p.example_id]["label"].lower() in paper[p.example_id]["pred"].lower())
               == p.hit for p in ours)  # fmt: skip
    line = f"{'closed' if closed else 'open'} world: answers {texts}/30, hits {hits}/30"
    if closed:
        listed = sum(
            re.search(r'Choose one from "(.*)"\.', paper[p.example_id]["output"]).group(1)
            == ", ".join(names[i] for i in p.choices) for p in ours
        )  # fmt: skip
        line += f", offered lists {listed}/30"
    return line


def compare_wikiqa(work: Path, model: Path, env: dict, paper_repo: Path) -> str:
    from importlib import resources

    from PIL import Image
    from record_paper_outputs import notebook_parser  # the eval notebook's own code, executed

    folder = work / "wikiqa"
    shipped = resources.files("vlmclf").joinpath("data/imagewikiqa.jsonl").read_text()
    rows = [json.loads(line) for line in shipped.splitlines()[:8]]
    for n, row in enumerate(rows):
        (folder / row["image"]).parent.mkdir(parents=True, exist_ok=True)
        picture = Image.open(work / "fm" / "all_images" / "test" / f"{n:05d}.png")
        picture.convert("RGB").save(folder / row["image"], format="JPEG")
    questions = folder / "questions.jsonl"
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    paper_questions = folder / "paper_questions.jsonl"
    paper_questions.write_text("".join(
        json.dumps({**row, "image": str(folder / row["image"])}) + "\n" for row in rows
    ))  # fmt: skip
    out = folder / "paper_out.jsonl"
    out.unlink(missing_ok=True)
    run(sys.executable, str(work / "wikiqa_main.py"), "--model_id", str(model), "--data_path",
        str(paper_questions), "--output_path", str(out), env=env)  # fmt: skip
    paper = [json.loads(line) for line in out.read_text().splitlines()]
    result = vlmclf("wikiqa", "--model", f"hf:{model}", "--wikiqa-images", str(folder),
                    "--questions", str(questions), "--protocol", "paper", "--dtype",
                    env["PAPER_DTYPE"], "--store", str(work / "runs.sqlite"), "--out",
                    str(folder / "report"))  # fmt: skip
    from vlmclf.store import RunStore

    with RunStore(work / "runs.sqlite", read_only=True) as store:
        ours = store.predictions(result["run_id"])
    numbered = folder / "paper_out_with_ids.jsonl"  # evaluate() reads the key from question_id
    numbered.write_text("".join(
        json.dumps({**p, "question_id": f"{n}_{p['label']}"}) + "\n" for n, p in enumerate(paper)
    ))  # fmt: skip
    paper_letters = notebook_parser(paper_repo, folder)[1](numbered)
    texts = sum(p["pred"] == o.text for p, o in zip(paper, ours, strict=True))
    letters = sum(x == (None if o.pred is None else "ABCD"[o.pred])
                  for x, o in zip(paper_letters, ours, strict=True))  # fmt: skip
    return f"ImageWikiQA: answers {texts}/8, letters {letters}/8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper-repo", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/paper-vs-vlmclf"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for name, path in SCRIPTS.items():
        (args.work / name).write_text(offline(read_script(args.paper_repo, path)))
    env = {**os.environ, "PAPER_DTYPE": args.dtype}
    model, relative, absolute = prepare(args.work)
    print(compare_features(args.work, model, relative, absolute, env))
    print(compare_generation(args.work, model, absolute, env, closed=False))
    print(compare_generation(args.work, model, absolute, env, closed=True))
    print(compare_wikiqa(args.work, model, env, args.paper_repo))


if __name__ == "__main__":
    main()
