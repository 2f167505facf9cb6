"""The encoder-by-LLM grid: five VLMs trained with one recipe, for ``vlmclf attribute``.

Ghosh, Zhang and Schmidt (2026) find that a better vision encoder helps fine-grained
classification far more than a better LLM, and that pretraining with the LLM unfrozen matters for
fine-grained knowledge. The grid lets the organism ask the same: {full EfficientNet-Lite0, its
block-2 features} x {SmolLM2-135M, SmolLM2 with 3-bit weights}, each with its own projector
trained by ``train_vlm`` under ``GRID_RECIPE``, plus the full pair trained with LoRA adapters on
the LLM. The recipe is ``organism:vlm``'s, identical across cells, with uniform caption
frequencies so that no class is favoured by its caption count; the full frozen pair under it is
``organism:vlm-uniform``, shipped once. ``EVALUATION_FILE`` holds each cell's measured accuracy
and the answers to the first test images that the offline loading test reproduces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmclf.organism.load import GRID, RECORD_FILE, WEIGHTS_DIR

GRID_RECIPE: dict[str, Any] = {
    "steps": 200,
    "batch_size": 16,
    "freq": "uniform",
    "seed": 0,
    "weights_dtype": "float16",
}
"""``organism:vlm``'s recipe (3,200 captions, 200 AdamW steps of 16) with uniform caption counts
(320 per class), so that no class is favoured by its count; the full pair under it is
``organism:vlm-uniform``."""
LORA = {"lora_rank": 8, "lora_alpha": 16.0, "lora_lr": 2e-4}


def grid_options(name: str) -> dict[str, Any]:
    """``train_organism`` keyword arguments that train grid cell ``name``."""
    if name not in GRID:
        raise ValueError(f"unknown grid organism {name!r}; use one of {', '.join(GRID)}")
    cell = GRID[name]
    options = {**GRID_RECIPE, "image_encoder": cell["image_encoder"],
               "language_model": cell["language_model"]}  # fmt: skip
    if cell["llm"] == "lora":
        options |= LORA
    return options


def train_grid_cell(name: str, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Train one cell into ``out_dir``; its record's command is the one that reproduces it."""
    import json

    from vlmclf.organism.train import train_organism

    record = train_organism("vlm", out_dir, progress=progress, **grid_options(name))
    record["command"] = f"vlmclf organism grid {name} --out {out_dir}"
    record["grid"] = {"name": name, **GRID[name], "recipe": GRID_RECIPE}
    (Path(out_dir) / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


EVALUATION_FILE = WEIGHTS_DIR / "grid" / "evaluation.json"
"""Written by ``scripts/organism_grid_record.py``; outside every cell's folder, so recording an
evaluation never changes a cell's identity."""


FASHION_TOPS = ("T-shirt/top", "Pullover", "Coat", "Shirt")
"""Fashion-MNIST's confusable upper-body garments: the "fine-grained" group of finding 6 (most of
every classifier's confusions fall among them); the other six classes are the coarse group."""
CHECK_IMAGES = 4
"""Test images whose answers each shipped cell's record holds, for the offline loading test."""
