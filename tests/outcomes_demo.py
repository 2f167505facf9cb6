"""The README's example of outcome kinds: `vlmclf eval` against a loopback OpenAI-compatible
server that gives two empty answers and one refusal, and fails every attempt at one more image
during the first run (a server in trouble), then recovers for the second run.

    python tests/outcomes_demo.py OUT_DIR

Not a test (pytest does not collect it); it prints the two summaries the README shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from api_servers import EMPTY, FakeApiServer, status
from PIL import Image

REFUSAL = {"choices": [{"message": {"content": None, "refusal": "I can't help with that"},
                        "finish_reason": "stop"}]}  # fmt: skip


def write_manifest(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(12):
        label = "cat" if i % 2 == 0 else "dog"
        Image.new("RGB", (16, 16), (20 * i, 100, 200 - 10 * i)).save(folder / f"{i:02d}.png")
        lines.append(json.dumps({"image": f"{i:02d}.png", "label": label}))
    manifest = folder / "pets.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main(out: Path) -> None:
    manifest = write_manifest(out / "pets")
    phase = {"first": True}

    def plan(index: int, prompt: str):  # requests arrive one at a time (--concurrency 1)
        if not phase["first"]:
            return None
        if index in (0, 1):
            return EMPTY
        if index == 2:
            return status(200, body=json.dumps(REFUSAL).encode())
        if 3 <= index <= 9:  # one image: seven attempts, all refused with 503
            return status(503, retry_after=0)
        return None

    env = {**os.environ, "VLMCLF_API_CACHE": str(out / "api-cache.sqlite")}
    with FakeApiServer("openai", key=None, plan=plan, answer=lambda p: "It is a cat.") as server:
        command = [
            "vlmclf",
            "eval",
            "--model",
            "openai:test-model",
            "--base-url",
            server.base_url,
            "--dataset",
            str(manifest),
            "--method",
            "generate",
            "--concurrency",
            "1",
            "--store",
            str(out / "runs.sqlite"),
            "--no-progress",
        ]
        for run in ("first", "second"):
            phase["first"] = run == "first"
            print(
                f"$ vlmclf eval --model openai:test-model --base-url {server.base_url} "
                f"--dataset pets.jsonl --method generate --concurrency 1   # {run} run"
            )
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            print(done.stdout + done.stderr.replace(str(out) + "/", ""), end="")
            print(f"(exit {done.returncode}; {len(server.chat_requests)} requests so far)\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(Path(sys.argv[1]))
