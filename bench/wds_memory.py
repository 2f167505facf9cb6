"""Peak memory of `vlmclf eval` over a synthetic WebDataset as the number of shards grows.

Writes COUNT noise JPEGs of SIDE x SIDE (incompressible, so the shards are as large as real
photos make them) with a ``.cls`` label each into CLIP_benchmark's layout (``classnames.txt``,
``test/<n>.tar``), once per shard count, and runs `vlmclf eval --method clip --dataset wds:ROOT`
on each in a fresh child process with a fresh store; then the same images as loose files in an
image folder (``--dataset imagefolder``), the reference for what the run itself takes. Prints
JSON with the child's peak RSS (from wait4), its wall time and the shard sizes. The reader
lists shards by their tar headers and reads each image member by its offset, so the peak should
follow neither the shard size (one shard holds the whole dataset at ``--shards 1``) nor the
shard count.

    python bench/wds_memory.py [--count 10000] [--side 256] [--shards 1,10,100,1000]
                               [--model random:clip] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"
CLASSES = [f"class {i}" for i in range(10)]
CHILD = "import sys; from vlmclf.cli import app; sys.argv[0] = 'vlmclf'; app()"


def jpeg_bytes(index: int, side: int) -> bytes:
    pixels = np.random.default_rng(index).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_shards(root: Path, images: list[bytes], shards: int) -> list[int]:
    """ROOT/classnames.txt and ROOT/test/<n>.tar, samples dealt to shards in order; returns the
    shard sizes in bytes."""
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    per_shard = -(-len(images) // shards)
    for shard in range(shards):
        with wds.TarWriter(str(root / "test" / f"{shard:05d}.tar")) as writer:
            for index in range(shard * per_shard, min(len(images), (shard + 1) * per_shard)):
                writer.write({"__key__": f"{index:06d}", "jpg": images[index],
                              "cls": index % len(CLASSES)})  # fmt: skip
    return [path.stat().st_size for path in sorted((root / "test").glob("*.tar"))]


def write_folder(root: Path, images: list[bytes]) -> None:
    """The same images as ROOT/<class>/<index>.jpg."""
    for index, data in enumerate(images):
        folder = root / CLASSES[index % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:06d}.jpg").write_bytes(data)


def measure(dataset: list[str], store: Path, model: str) -> dict:
    """One eval in a child process; its peak RSS comes from wait4's resource usage."""
    command = [sys.executable, "-c", CHILD, "eval", "--model", model, "--method", "clip",
               *dataset, "--store", str(store), "--no-progress", "--json"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.stdout.read(), child.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"eval failed: {err.decode()[-2000:]}")
    summary = json.loads(out)
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        "wall_s": round(time.perf_counter() - start, 1),
        "n": summary["n"],
        "n_failed": summary["n_failed"],
    }


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    images = [jpeg_bytes(index, args.side) for index in range(args.count)]
    report: dict = {
        "images": args.count,
        "side": args.side,
        "model": args.model,
        "dataset_mb": round(sum(map(len, images)) / 2**20, 1),
        "encode_s": round(time.perf_counter() - start, 1),
        "cases": [],
    }
    for shards in args.shards:
        with tempfile.TemporaryDirectory(prefix="vlmclf-bench-wds-") as tmp:
            root = Path(tmp) / "wds"
            sizes = write_shards(root, images, shards)
            case = {"shards": shards, "largest_shard_mb": round(max(sizes) / 2**20, 1)}
            dataset = ["--dataset", f"wds:{root}"]
            case.update(measure(dataset, Path(tmp) / "runs.sqlite", args.model))
            report["cases"].append(case)
            if not args.json:
                print(json.dumps(case), file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="vlmclf-bench-folder-") as tmp:
        write_folder(Path(tmp) / "images", images)
        dataset = ["--dataset", "imagefolder", "--data-root", str(Path(tmp) / "images")]
        report["image_folder"] = measure(dataset, Path(tmp) / "runs.sqlite", args.model)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--shards", default="1,10,100,1000",
                        type=lambda text: [int(part) for part in text.split(",")])  # fmt: skip
    parser.add_argument("--model", default="random:clip")
    parser.add_argument("--json", action="store_true", help="one JSON object only")
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
