"""Regenerate the command listing of the README's "Reproducing the paper" section.

    python scripts/readme_reproduce.py          # print the Markdown
    python scripts/readme_reproduce.py --write  # replace it in README.md between the markers

Every block is the output of the `vlmclf reproduce` command written above it, for the paper's
main model on ImageNet (other datasets: repeat `--dataset`, or leave it out for all four).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from typer.testing import CliRunner

from vlmclf.cli import app

BEGIN, END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"
MODEL = "hf:llava-hf/llava-1.5-7b-hf"
CLIP = "hf:openai/clip-vit-large-patch14-336"
EXTRA = {
    "table4": ["--wikiqa-images", "/data/imagenet/val"],
    "figure3": ["--corpus", "blip_laion_cc_sbu_558k.json", "--corpus", "llava_v1_5_mix665k.json"],
}
SAME_AS = {"figure2": "table9", "figure4": "table9"}  # the same runs, another view


def reproduce(*args: str) -> tuple[str, str]:
    argv = ["reproduce", *args]
    result = CliRunner().invoke(app, argv)
    if result.exit_code != 0:
        raise SystemExit(f"vlmclf {shlex.join(argv)} failed: {result.output}")
    return shlex.join(["vlmclf", *argv]), result.stdout.rstrip()


def section() -> str:
    from vlmclf.paper.reproduce import TABLES

    parts = []
    command, out = reproduce("--list")
    parts.append(f"```\n$ {command}\n{out}\n```")
    for name in TABLES:
        if name in SAME_AS:
            parts.append(f"`{name}` runs the commands of `{SAME_AS[name]}` and lays them out "
                         "as the figure's values.")  # fmt: skip
            continue
        args = [name, "--model", MODEL, "--clip-model", CLIP, "--dataset", "imagenet",
                "--data-root", "/data/imagenet", *EXTRA.get(name, [])]  # fmt: skip
        command, out = reproduce(*args)
        parts.append(f"```\n$ {command}\n{out}\n```")
    return "\n\n".join(parts)


def main() -> None:
    text = section()
    if "--write" not in sys.argv:
        print(text)
        return
    readme = Path(__file__).resolve().parents[1] / "README.md"
    before, rest = readme.read_text().split(BEGIN, 1)
    _, after = rest.split(END, 1)
    readme.write_text(f"{before}{BEGIN}\n{text}\n{END}{after}")


if __name__ == "__main__":
    main()
