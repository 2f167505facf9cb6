"""The inputs of tests/test_paper_fidelity.py, built by one piece of code for both sides:
scripts/record_paper_outputs.py runs the paper's code on them, the tests run vlmclf on them, and
their fingerprints (recorded in the fixture) show when the two would not see the same inputs."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

QUESTION = "What type of object is in this photo?"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]  # fmt: skip
POOLING_QUESTIONS = [QUESTION, "What is it?", QUESTION + " Answer in one short word, please."]
FINETUNE_QUESTION = "What type of object is in the photo?"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names and float32 bytes): a different tiny model shows here."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def files_fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_manifest(root: Path) -> Path:
    """30 greyscale PNGs (rng 0) with labels cycling through the classes, relative manifest."""
    rng = np.random.default_rng(0)
    lines = []
    for index in range(30):
        pixels = rng.integers(0, 255, (28, 28), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{index:02d}.png")
        record = {"image": f"{index:02d}.png", "label": CLASSES[index * 7 % 10], "split": "test"}
        lines.append(json.dumps(record))
    path = root / "fm.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def pooling_images() -> list[Image.Image]:
    return [Image.new("RGB", (28, 28), (30 * i, 90, 200 - 30 * i)) for i in range(3)]


def write_wikiqa(root: Path, n: int) -> Path:
    """The first ``n`` shipped ImageWikiQA questions, each with a small JPEG (rng 1) of its own."""
    shipped = resources.files("vlmclf").joinpath("data/imagewikiqa.jsonl").read_text()
    rows = [json.loads(line) for line in shipped.splitlines()[:n]]
    rng = np.random.default_rng(1)
    for row in rows:
        (root / row["image"]).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / row["image"], format="JPEG")
    path = root / "questions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
