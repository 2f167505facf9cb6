"""Record what the paper's and LLaVA's code output on the inputs of tests/test_paper_fidelity.py.

    python scripts/record_paper_outputs.py --paper-repo DIR --llava-repo DIR \\
        [--out tests/fixtures/paper_outputs.json] [--work /tmp/paper-record]

``--paper-repo`` is a checkout (or bare git directory) of yuhui-zh15/VLMClassifier, ``--llava-repo``
one of haotian-liu/LLaVA. Nothing of theirs is kept in this repository: their files are read from
the checkouts into ``--work`` and run there, and only their outputs are written to the fixture.
The tests compare vlmclf against that fixture, so a protocol change that the third-party code
would not make fails a test, without their code living here.

What is run, and what had to be edited to run it offline on a CPU (each edit is listed in the
fixture's ``edits``):

* main_results/main.py, feature_analysis/extract_feature.py, imagewikiqa/main.py: run as scripts
  on the tests' saved tiny LLaVA (float32) and images, with the edits of compare_paper_code.py
  (no ``device_map``/``.to("cuda")``, no unused clip/torchvision imports) plus: the generation
  length from ``PAPER_MAX_NEW_TOKENS`` (the tests ask for a few tokens, not 64/512/1024), and,
  for the padded-batch feature case only, each item's own question (``item["question"]``).
* imagewikiqa/eval.ipynb: its two code cells are executed, ``evaluate`` run on the output file;
  ``random.choice`` is observed during each parse to tell a fallback guess from a parse.
* LLaVA: llava/constants.py, conversation.py and mm_utils.py imported as a package (an empty
  ``llava/__init__.py``: the real one imports the model code), ``preprocess_v1`` taken from
  llava/train/train.py and run with the ``v1`` conversation, as train.py sets it for vicuna_v1.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_paper_code import offline, read_script  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from paper_inputs import (  # noqa: E402  (the tests' inputs: one builder for both sides)
    CLASSES,
    FINETUNE_QUESTION,
    POOLING_QUESTIONS,
    QUESTION,
    files_fingerprint,
    pooling_images,
    weights_fingerprint,
    write_manifest,
    write_wikiqa,
)

CUE = "Let's think step by step."
CUE_CASES = [
    "Trendelenburg position", ".B,", "C", "(A) Fowler's position", "Flat position.", "B or C",
    "Upright position, so B.", "I would say the flat one", "(D)", "A,",
]
CUE_OPTIONS = {"A": "Fowler's position", "B": "Upright position", "C": "Trendelenburg position",
               "D": "Flat position"}  # fmt: skip
FINETUNE_LABELS = ["Dress", "Ankle boot", "T-shirt/top"]
GENERATE_TOKENS = 6  # the CoT generation test
WIKIQA_TOKENS = 24
WIKIQA_N = 4
ANSWER_START = " Trendelenburg position"  # appended to the CoT prompt (edit "answer_start")


# ------------------------------------------------------------------------ the paper's scripts

EXTRA_EDITS = {
    "max_new_tokens": (
        re.compile(r"max_new_tokens=(64 if not chain_of_thought else 512|1024)"),
        'max_new_tokens=int(os.environ["PAPER_MAX_NEW_TOKENS"])',
    ),
    "answer_start": (
        re.compile(r'f"USER: <image>\\n\{question\}\\nASSISTANT: Let\'s think step by step\."'),
        'f"USER: <image>\\n{question}\\nASSISTANT: Let\'s think step by step."'
        ' + os.environ.get("PAPER_ANSWER_START", "")',
    ),
    "own_question": (
        re.compile(r"questions = \[init_prompt for _ in batch\]"),
        'questions = [item.get("question", init_prompt) for item in batch]',
    ),
}


def prepare_script(repo: Path, path: str, work: Path, edits: list[str]) -> Path:
    source = offline(read_script(repo, path))
    for name in edits:
        pattern, replacement = EXTRA_EDITS[name]
        source, count = pattern.subn(lambda _match, text=replacement: text, source)
        if count != 1:
            sys.exit(f"{path}: edit {name!r} matched {count} times, expected once")
    target = work / (path.replace("/", "__"))
    target.write_text(source)
    return target


def run_script(script: Path, *args: str, tokens: int = 1, answer_start: str = "") -> None:
    env = {**os.environ, "PAPER_DTYPE": "float32", "PAPER_MAX_NEW_TOKENS": str(tokens),
           "PAPER_ANSWER_START": answer_start}  # fmt: skip
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          env=env, cwd=script.parent)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"failed: {script.name} {' '.join(args)}\n{done.stderr[-3000:]}")


def absolute(manifest: Path, out: Path, extra: list[dict] | None = None) -> Path:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows = [{**row, "image": str(manifest.parent / row["image"])} for row in rows]
    if extra is not None:
        rows = [{**row, **more} for row, more in zip(rows, extra, strict=True)]
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def floats(tensor: torch.Tensor) -> list[float]:
    """float32 values in their shortest exact decimal form (they read back bit for bit)."""
    return [float(str(np.float32(x))) for x in tensor.to(torch.float32).numpy()]


def dump(fixture: dict) -> str:
    """Indented JSON with each list of numbers on one line."""
    text = json.dumps(fixture, indent=1)
    return re.sub(r"\[\s+([-+\d.eE,\s]+?)\s+\]",
                  lambda m: "[" + ", ".join(re.split(r",\s*", m.group(1).strip())) + "]", text)


def record_features(repo: Path, work: Path, model: Path, manifest: Path) -> dict:
    """extract_feature.py on the 30 images (batch 4) and on the padded three-question batch."""
    script = prepare_script(repo, "feature_analysis/extract_feature.py", work, [])
    classes = work / "classes.json"
    classes.write_text(json.dumps(CLASSES))
    data = absolute(manifest, work / "fm_abs.jsonl")
    run_script(script, "--model_id", str(model), "--data_path", str(data), "--class_path",
               str(classes), "--output_path", str(work / "feat"), "--batch_size", "4")  # fmt: skip
    features = torch.cat([torch.load(work / f"feat_{i}.pt") for i in (0, 1)])
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    random.seed(1234)  # the script's own shuffle, to name its rows
    random.shuffle(rows)
    names = [Path(row["image"]).name for row in rows]
    probe = {name: {"last_token": floats(f[0]), "mean": floats(f[1])}
             for name, f in zip(names, features, strict=True)}  # fmt: skip

    padded_script = prepare_script(repo, "feature_analysis/extract_feature.py", work / "padded",
                                   ["own_question"])  # fmt: skip
    pad_rows = []
    for index, (image, question) in enumerate(zip(pooling_images(), POOLING_QUESTIONS,
                                                  strict=True)):  # fmt: skip
        image.save(work / "padded" / f"{index}.png")
        pad_rows.append({"image": str(work / "padded" / f"{index}.png"), "question": question})
    pad_data = work / "padded" / "data.jsonl"
    pad_data.write_text("".join(json.dumps(row) + "\n" for row in pad_rows))
    run_script(padded_script, "--model_id", str(model), "--data_path", str(pad_data),
               "--class_path", str(classes), "--output_path", str(work / "padded" / "feat"),
               "--batch_size", "3")  # fmt: skip
    padded = torch.load(work / "padded" / "feat_0.pt")
    random.seed(1234)
    random.shuffle(pad_rows)
    order = [int(Path(row["image"]).stem) for row in pad_rows]
    by_index = {i: padded[n] for n, i in enumerate(order)}
    return {
        "probe": probe,
        "padded": {"questions": POOLING_QUESTIONS,
                   "last_token": [floats(by_index[i][0]) for i in range(3)],
                   "mean": [floats(by_index[i][1]) for i in range(3)]},
    }  # fmt: skip


def record_main(repo: Path, work: Path, model: Path, manifest: Path) -> dict:
    """main_results/main.py: CoT answers (its text after the last ASSISTANT:), batch 8, and the
    closed-world question it asks each image for K=4 and K=10."""
    script = prepare_script(repo, "main_results/main.py", work, ["max_new_tokens"])
    classes = work / "classes.json"
    data = absolute(manifest, work / "fm_abs.jsonl")
    common = ["--model_id", str(model), "--data_path", str(data), "--class_path", str(classes),
              "--split", "test", "--batch_size", "8"]  # fmt: skip
    out = work / "cot.jsonl"
    out.unlink(missing_ok=True)
    run_script(script, *common, "--chain_of_thought", "True", "--output_path", str(out),
               tokens=GENERATE_TOKENS)  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    cot = {Path(row["image"]).name: row["pred"] for row in rows}
    closed = {}
    for k in (4, 10):
        out = work / f"closed{k}.jsonl"
        out.unlink(missing_ok=True)
        run_script(script, *common, "--including_label", "True", "--n_labels", str(k),
                   "--output_path", str(out))  # fmt: skip
        asked = {}
        for row in map(json.loads, out.read_text().splitlines()):
            match = re.search(re.escape(QUESTION) + r' Choose one from "[^"]*"\.', row["output"])
            asked[Path(row["image"]).name] = match.group(0)
        closed[str(k)] = asked
    return {"cot_preds": cot, "cot_max_new_tokens": GENERATE_TOKENS, "closed_questions": closed}


def notebook_parser(repo: Path, work: Path):
    """The eval notebook's two code cells, executed; returns (namespace, letter_of)."""
    notebook = json.loads(read_script(repo, "imagewikiqa/eval.ipynb"))
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    namespace: dict = {"random": random, "np": np}
    exec(compile(cells[0], "eval.ipynb[0]", "exec"), namespace)
    parse = namespace["parse_multi_choice_response"]
    unparsed = object()
    letters: list = []

    def observed(response, all_choices, index2ans):
        """The notebook's parse, with its random guess seen as ``None``."""
        guess = random.choice
        random.choice = lambda _choices: unparsed
        try:
            letter = parse(response, all_choices, index2ans)
        finally:
            random.choice = guess
        letters.append(None if letter is unparsed else letter)
        return letters[-1]

    namespace["parse_multi_choice_response"] = observed
    (work / "outputs").mkdir(exist_ok=True)  # cell 1 evaluates every file in outputs/
    cwd = os.getcwd()
    os.chdir(work)
    try:
        exec(compile(cells[1], "eval.ipynb[1]", "exec"), namespace)
    finally:
        os.chdir(cwd)
    letters.clear()

    def evaluate_letters(path: Path) -> list:
        letters.clear()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the file's accuracy
            namespace["evaluate"](str(path))
        return list(letters)

    return observed, evaluate_letters


def record_wikiqa(repo: Path, work: Path, model: Path) -> dict:
    """imagewikiqa/main.py on the first four shipped questions, and the notebook's letters."""
    folder = work / "wikiqa"
    folder.mkdir(exist_ok=True)
    questions = write_wikiqa(folder, WIKIQA_N)
    script = prepare_script(repo, "imagewikiqa/main.py", work, ["max_new_tokens", "answer_start"])
    rows = [json.loads(line) for line in questions.read_text().splitlines()]
    data = folder / "paper_questions.jsonl"
    data.write_text("".join(json.dumps({**row, "image": str(folder / row["image"])}) + "\n"
                            for row in rows))  # fmt: skip
    out = folder / "out.jsonl"
    out.unlink(missing_ok=True)
    run_script(script, "--model_id", str(model), "--data_path", str(data), "--output_path",
               str(out), "--batch_size", str(WIKIQA_N), tokens=WIKIQA_TOKENS)  # fmt: skip
    preds = [json.loads(line)["pred"] for line in out.read_text().splitlines()]
    parse, evaluate_letters = notebook_parser(repo, work)
    numbered = folder / "out_with_ids.jsonl"  # evaluate() reads the answer key from question_id
    numbered.write_text("".join(
        json.dumps({**json.loads(line), "question_id": f"{n}_{row['label']}"}) + "\n"
        for n, (line, row) in enumerate(zip(out.read_text().splitlines(), rows, strict=True))
    ))  # fmt: skip
    letters = evaluate_letters(numbered)
    # the prompt ending inside an answer: its one new token follows "Trendelenburg position",
    # so only the cue in front makes the text long enough for the option text to count
    started = folder / "started.jsonl"
    started.unlink(missing_ok=True)
    run_script(script, "--model_id", str(model), "--data_path", str(data), "--output_path",
               str(started), "--batch_size", str(WIKIQA_N), tokens=1,
               answer_start=ANSWER_START)  # fmt: skip
    started_preds = [json.loads(line)["pred"] for line in started.read_text().splitlines()]
    numbered.write_text("".join(
        json.dumps({**json.loads(line), "question_id": f"{n}_{row['label']}"}) + "\n"
        for n, (line, row) in enumerate(zip(started.read_text().splitlines(), rows, strict=True))
    ))  # fmt: skip
    started_letters = evaluate_letters(numbered)
    cue = {answer: parse(f"{CUE} {answer}", list("ABCD"), CUE_OPTIONS) for answer in CUE_CASES}
    bare = {answer: parse(answer, list("ABCD"), CUE_OPTIONS) for answer in CUE_CASES}
    return {"preds": preds, "letters": letters, "max_new_tokens": WIKIQA_TOKENS,
            "images": files_fingerprint([folder / row["image"] for row in rows]),
            "cue_letters": cue, "bare_letters": bare,
            "answer_start": {"text": ANSWER_START, "max_new_tokens": 1, "preds": started_preds,
                             "letters": started_letters}}  # fmt: skip


# ---------------------------------------------------------------------------------- LLaVA


def llava_package(repo: Path, work: Path):
    """llava.constants, llava.conversation, llava.mm_utils importable from ``work``."""
    package = work / "llava_src" / "llava"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    for name in ("constants", "conversation", "mm_utils"):
        (package / f"{name}.py").write_text(read_script(repo, f"llava/{name}.py"))
    sys.path.insert(0, str(package.parent))
    return (importlib.import_module("llava.conversation"),
            importlib.import_module("llava.constants"), importlib.import_module("llava.mm_utils"))


def llava_preprocess_v1(repo: Path, conversation_lib, constants, mm_utils):
    """train.py's ``preprocess_v1``, executed with the globals train.py gives it."""
    import copy
    from collections.abc import Sequence

    import tokenizers
    import transformers
    from packaging import version

    source = read_script(repo, "llava/train/train.py")
    tree = ast.parse(source)
    (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "preprocess_v1"]
    conversation_lib.default_conversation = conversation_lib.conv_templates["v1"]
    namespace = {
        "copy": copy, "Dict": dict, "Sequence": Sequence, "torch": torch,
        "transformers": transformers, "conversation_lib": conversation_lib,
        "tokenizer_image_token": mm_utils.tokenizer_image_token,
        "IGNORE_INDEX": constants.IGNORE_INDEX, "IMAGE_TOKEN_INDEX": constants.IMAGE_TOKEN_INDEX,
        "IS_TOKENIZER_GREATER_THAN_0_14":
            version.parse(tokenizers.__version__) >= version.parse("0.14"),
    }  # fmt: skip
    exec(compile(ast.get_source_segment(source, node), "train.py:preprocess_v1", "exec"),
         namespace)  # fmt: skip
    return namespace["preprocess_v1"]


def record_llava(repo: Path, work: Path, tokenizer) -> dict:
    conversation_lib, constants, mm_utils = llava_package(repo, work)
    preprocess_v1 = llava_preprocess_v1(repo, conversation_lib, constants, mm_utils)

    def prompt(answer: str | None) -> str:
        conv = conversation_lib.conv_templates["vicuna_v1"].copy()
        conv.append_message(conv.roles[0], f"<image>\n{FINETUNE_QUESTION}")
        conv.append_message(conv.roles[1], answer)
        return conv.get_prompt()

    tokens = {}
    for label in FINETUNE_LABELS:
        source = [{"from": "human", "value": f"<image>\n{FINETUNE_QUESTION}"},
                  {"from": "gpt", "value": label}]  # fmt: skip
        done = preprocess_v1([source], tokenizer, has_image=True)
        tokens[label] = {"input_ids": done["input_ids"][0].tolist(),
                         "labels": done["labels"][0].tolist()}  # fmt: skip
    return {"vicuna_v1_question_prompt": prompt(None),
            "vicuna_v1_training_prompts": {label: prompt(label) for label in FINETUNE_LABELS},
            "preprocess_v1": tokens, "image_token_index": constants.IMAGE_TOKEN_INDEX,
            "ignore_index": constants.IGNORE_INDEX}  # fmt: skip


def commit_of(repo: Path) -> str:
    git_dir = ["git", "-C", str(repo)]
    return subprocess.run([*git_dir, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper-repo", type=Path, required=True)
    parser.add_argument("--llava-repo", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/paper_outputs.json"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/paper-record"))
    args = parser.parse_args()
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vlmclf.models.random_models import save_random_model

    work = args.work.resolve()
    (work / "images").mkdir(parents=True, exist_ok=True)
    (work / "padded").mkdir(exist_ok=True)
    model_dir = save_random_model("llava", work / "llava")
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_dir)
    manifest = write_manifest(work / "images")
    images = sorted((work / "images").glob("*.png"))
    fixture = {
        "made_by": "python scripts/record_paper_outputs.py --paper-repo DIR --llava-repo DIR",
        "sources": {"yuhui-zh15/VLMClassifier": commit_of(args.paper_repo),
                    "haotian-liu/LLaVA": commit_of(args.llava_repo)},
        "edits": [
            "paper scripts: device_map/.to('cuda') removed, dtype float32, clip/torchvision "
            "imports commented out (scripts/compare_paper_code.py offline())",
            "paper scripts: max_new_tokens from PAPER_MAX_NEW_TOKENS (few tokens for the tests)",
            "extract_feature.py, padded case only: each item's own question",
            "imagewikiqa/main.py: PAPER_ANSWER_START appended to its LLaVA-1.5 prompt (empty "
            "but for the wikiqa answer_start case)",
            "eval.ipynb evaluate(): main.py's rows given a question_id '<n>_<label>' (it reads "
            "the answer key there)",
            "LLaVA: empty llava/__init__.py; preprocess_v1 executed alone from train.py",
        ],
        "model": {"built": "save_random_model('llava', dir), seed 0",
                  "weights_sha256": weights_fingerprint(model)},
        "images_sha256": files_fingerprint(images),
        "features": record_features(args.paper_repo, work, model_dir, manifest),
        "main": record_main(args.paper_repo, work, model_dir, manifest),
        "wikiqa": record_wikiqa(args.paper_repo, work, model_dir),
        "llava": record_llava(args.llava_repo, work, processor.tokenizer),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(fixture) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
