"""Peak memory of `vlmclf eval` on very large images, with default flags.

Writes N images of SIDE x SIDE (a smooth gradient, so files are small and quick to write; baseline
JPEG by default, or PNG) into an image folder in a temporary directory, runs
`vlmclf eval --model MODEL --dataset imagefolder` on it in a child process and prints JSON with
the child's peak RSS (from wait4), its wall time, and the decoded-size arithmetic. Each case runs
in a fresh child with a fresh store, in this one run:

* ``bounded``: default flags (images over 4096 x 4096 pixels decode reduced; 512 MiB look-ahead);
* ``full_size`` (with ``--full-size``): ``--decode-max-pixels 0``, full-size decoding with the
  byte-bounded look-ahead;
* ``old_src`` (with ``--old-src DIR``): default flags on another checkout's ``src`` (e.g. main's),
  the behaviour before this change.

    python bench/images.py [--count 24] [--side 9000] [--format jpeg|png] [--full-size]
                           [--old-src /path/to/main/src] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vlmclf.data.images import DEFAULT_MAX_DECODED_PIXELS, reduced_size
from vlmclf.run.prefetch import PREFETCH_BYTES

SRC = Path(__file__).resolve().parents[1] / "src"
CLASSES = ("dawn", "dusk")
CHILD = "import sys; from vlmclf.cli import app; sys.argv[0] = 'vlmclf'; app()"


def gradient(side: int, flip: bool) -> Image.Image:
    """A smooth RGB gradient (compresses to a few MB), built row band by row band."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    red = np.broadcast_to(ramp[None, :], (side, side)).astype(np.uint8)
    green = np.broadcast_to(ramp[:, None], (side, side)).astype(np.uint8)
    blue = (255 - green) if flip else green // 2
    return Image.fromarray(np.dstack([red, green, blue]))


def write_folder(root: Path, count: int, side: int, fmt: str) -> int:
    """``root/<class>/<i>.<ext>``: one file per class written, the rest copied. Returns the size
    of one file in bytes."""
    suffix = ".jpg" if fmt == "jpeg" else ".png"
    sources = []
    for index, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        source = root / name / f"0{suffix}"
        image = gradient(side, flip=bool(index))
        if fmt == "jpeg":
            image.save(source, quality=90, progressive=False)
        else:
            image.save(source, compress_level=1)
        del image
        sources.append(source)
    with Image.open(sources[0]) as check:
        assert check.size == (side, side)
        assert fmt != "jpeg" or (check.format == "JPEG" and "progressive" not in check.info)
    for i in range(len(CLASSES), count):
        source = sources[i % len(CLASSES)]
        shutil.copyfile(source, source.parent / f"{i}{suffix}")
    return sources[0].stat().st_size


def measure(root: Path, store: Path, model: str, src: Path, extra: list[str]) -> dict:
    """Run one eval in a child process; its peak RSS comes from wait4's resource usage."""
    command = [sys.executable, "-c", CHILD, "eval", "--model", model, "--method", "clip",
               "--dataset", "imagefolder", "--data-root", str(root), "--store", str(store),
               "--no-progress", "--json", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # read both pipes before waiting, then wait4 for this child's own rusage
    out, err = child.stdout.read(), child.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"eval failed ({child.returncode}): {err.decode()[-2000:]}")
    summary = json.loads(out)
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        "wall_s": round(wall, 1),
        "run_id": summary["run_id"],
        "summary": {k: v for k, v in summary.items() if k in ("n", "accuracy", "failed")},
    }


def run(args: argparse.Namespace) -> dict:
    target = reduced_size((args.side, args.side), DEFAULT_MAX_DECODED_PIXELS) or (args.side,) * 2
    report: dict = {
        "images": args.count,
        "side": args.side,
        "format": args.format,
        "model": args.model,
        # Pillow holds an RGB pixel in 4 bytes
        "full_decode_mb_each": round(args.side**2 * 4 / 2**20, 1),
        "bounded_decode_mb_each": round(target[0] * target[1] * 4 / 2**20, 1),
        "bounded_size": list(target),
        "prefetch_budget_mb": PREFETCH_BYTES // 2**20,
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="vlmclf-bench-images-") as tmp:
        root = Path(tmp) / "images"
        start = time.perf_counter()
        report["file_mb_each"] = round(
            write_folder(root, args.count, args.side, args.format) / 2**20, 2
        )
        report["write_s"] = round(time.perf_counter() - start, 1)
        cases = {"bounded": (SRC, [])}
        if args.full_size:
            cases["full_size"] = (SRC, ["--decode-max-pixels", "0"])
        if args.old_src:
            cases["old_src"] = (Path(args.old_src), [])
        for name, (src, extra) in cases.items():
            store = Path(tmp) / f"{name}.sqlite"
            report["cases"][name] = measure(root, store, args.model, src, extra)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--side", type=int, default=9000)
    parser.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    parser.add_argument("--model", default="organism:clip")
    parser.add_argument("--full-size", action="store_true", help="also --decode-max-pixels 0")
    parser.add_argument("--old-src", help="also run another checkout's src (the old behaviour)")
    parser.add_argument("--json", action="store_true", help="one JSON object only")
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
