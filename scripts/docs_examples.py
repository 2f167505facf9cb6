"""Regenerate every example output shown in README.md and docs/*.md from real runs.

    python scripts/docs_examples.py                 # rerun every example, rewrite the pages
    python scripts/docs_examples.py --check         # rerun, fail naming each stale example
    python scripts/docs_examples.py --fast --check  # only the cheap examples (the default test)
    python scripts/docs_examples.py --only NAME     # one example (after what it needs)
    python scripts/docs_examples.py --print         # print the blocks, write nothing

An example is declared once below: its name, the page that shows it and the commands it runs.
The page holds it between ``<!-- example:NAME -->`` and ``<!-- /example:NAME -->``; everything
between the markers is replaced by one fenced block of ``$ command`` lines and what each printed
(stdout and stderr, as a terminal shows them; progress bars are turned off). Every input the
commands use (manifests, image folders, a caption corpus, an API server) is made here, in a
scratch folder that is the commands' working directory, and all examples share one store,
``vlmclf-runs.sqlite`` there, in the order declared, so a later example sees the runs of the
earlier ones (``vlmclf results``) and reuses them.

What must change from machine to machine is masked, and only that:

* ``<id1>``, ``<id2>``, ...: run, analysis and report-folder ids (they hash file paths and
  modification times), numbered in order of first appearance within one example;
* ``<t>``: a duration (``12.3 s``, ``3 min``) and the ``seconds`` column of ``vlmclf results``;
* ``<size>``: a file size in KiB or MB; ``<port>``: a loopback port;
* ``<pid>``, ``<host>``, ``<time>``: a lease holder's process id, host name and start time;
* the scratch folder's absolute path is written as a relative one.

Everything else is deterministic: one CPU thread (``OMP_NUM_THREADS=1``), no GPU, fixed seeds.
Slow examples (``slow=True``: the full demo, fine-tuning, ``reproduce --run`` on the organism,
the 300-image hard multiple-choice runs) run only without ``--fast``.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import random
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^(?P<indent>[ \t]*)<!-- example:(?P<name>[\w-]+) -->[ \t]*$", re.MULTILINE)


# ---------------------------------------------------------------- the session the examples share


@dataclass
class Session:
    """The scratch folder the commands run in, and the values later commands refer to
    (``{name}`` in a command: a captured run id, a server's base URL)."""

    folder: Path
    values: dict[str, str] = field(default_factory=dict)
    namespace: dict[str, object] = field(default_factory=dict)  # the Python steps' globals
    background: list[subprocess.Popen] = field(default_factory=list)
    hooks: dict[str, Callable[[], None]] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for process in self.background:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        for cleanup in reversed(self.cleanups):
            cleanup()


@dataclass(frozen=True)
class Step:
    """One command as the page shows it (``vlmclf ...`` runs in this process through Typer's
    CliRunner; ``... &`` starts it in the background and waits for its port). ``kind`` says how
    it runs instead: ``shell`` (bash in the scratch folder: ``ls``, ``head``), ``python`` (the
    session's Python namespace, shown as an interactive session: ``>>> ...`` and what it
    printed), ``script`` (the same namespace, shown as the code alone)."""

    command: str
    keep: Callable[[str], str] | None = None  # abbreviates the output (with "...")
    shown: str | None = None  # the command line the page shows, where it differs
    capture: str | None = None  # remember this step's run id as {capture}
    hook: str | None = None  # instead of a command: call the session's hook of this name
    kind: str = "vlmclf"  # or "shell", "python", "script"


@dataclass(frozen=True)
class Example:
    name: str
    page: str
    steps: tuple[Step, ...]
    setup: Callable[[Session], None] | None = None
    slow: bool = False
    make: Callable[[], str] | None = None  # the block comes from this, not from steps
    needs: tuple[str, ...] = ()  # examples that must run first (--only): captured ids, runs
    fence: str = ""  # the code block's language ("python" for the Python API's sessions)

    @property
    def markers(self) -> tuple[str, str]:
        if self.name == "reproduce":  # scripts/readme_reproduce.py --write uses these too
            return "<!-- reproduce:begin -->", "<!-- reproduce:end -->"
        return f"<!-- example:{self.name} -->", f"<!-- /example:{self.name} -->"


# ---------------------------------------------------------------- inputs, made here


class CannotRunHere(Exception):
    """This machine cannot make an example's input (e.g. no way to a read-only folder as root):
    the example is left as its page shows it, and the run says so."""


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def fashion_images(folder: Path, indices: list[int]) -> list[tuple[Path, str]]:
    """Fashion-MNIST test images as PNG files, with their class names."""
    from vlmclf.data.idx import read_fashion_mnist

    if not FASHION_MNIST.is_dir():
        raise SystemExit(f"no Fashion-MNIST at {FASHION_MNIST} (Debian: apt-get install "
                         "dataset-fashion-mnist; `make setup` does it)")  # fmt: skip
    dataset = read_fashion_mnist(FASHION_MNIST, "test")
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for n, index in enumerate(indices):
        example = dataset.examples[index]
        path = folder / f"{n}.png"
        example.loader().save(path)
        made.append((path, dataset.class_names[example.label]))
    return made


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> None:
    lines = [json.dumps({"image": image, "label": label}) for image, label in rows]
    path.write_text("\n".join(lines) + "\n")


def make_clothes(session: Session) -> None:
    """``clothes.jsonl`` (eight Fashion-MNIST images of four classes), ``typos.jsonl`` (labels
    spelt two ways) and ``dup.jsonl`` (one file listed twice with two labels)."""
    folder = session.folder
    if (folder / "clothes.jsonl").exists():
        return
    images = fashion_images(folder / "imgs", [0, 1, 2, 3, 4, 5, 6, 8])
    write_manifest(folder / "clothes.jsonl",
                   [(p.relative_to(folder).as_posix(), label) for p, label in images])  # fmt: skip
    typos = ["Sneaker", "sneaker", "Ankle boot", "Ankle bot"]
    write_manifest(folder / "typos.jsonl",
                   [(f"imgs/{n}.png", label) for n, label in enumerate(typos)])  # fmt: skip
    write_manifest(folder / "dup.jsonl", [("imgs/0.png", "Ankle boot"), ("imgs/1.png", "Pullover"),
                                          ("imgs/2.png", "Trouser"),
                                          ("./imgs/0.png", "Sneaker")])  # fmt: skip


def make_captions(session: Session) -> None:
    """``captions.txt``: as many captions per class as the organism VLM was trained on (the
    counts in its shipped training record), worded by its caption templates."""
    from vlmclf.organism.captions import VLM_CAPTION_TEMPLATES, vlm_caption

    record = ROOT / "src/vlmclf/organism/weights/vlm/training_record.json"
    counts = json.loads(record.read_text())["data"]["captions"]["counts"]
    picker = random.Random(0)
    lines = [vlm_caption(picker.choice(VLM_CAPTION_TEMPLATES), name)
             for name, count in counts.items() for _ in range(count)]  # fmt: skip
    picker.shuffle(lines)
    (session.folder / "captions.txt").write_text("\n".join(lines) + "\n")


def make_read_only_store(session: Session) -> None:
    """``ro/vlmclf-runs.sqlite``: a store with one run, on a folder that cannot be written
    (chmod for a normal user; root ignores modes, so a tmpfs remounted read-only)."""
    from typer.testing import CliRunner

    from vlmclf.cli import app

    make_clothes(session)
    folder = session.folder / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
                                 capture_output=True, text=True)  # fmt: skip
        if mounted.returncode != 0:
            raise CannotRunHere(f"as root, a read-only store needs a tmpfs, and mounting one "
                                f"failed: {mounted.stderr.strip()}")  # fmt: skip
        session.cleanups.append(lambda: subprocess.run(["umount", "-l", str(folder)], check=False))
    store = folder / "vlmclf-runs.sqlite"
    argv = ["eval", "--model", "random:clip", "--method", "clip", "--dataset", "clothes.jsonl",
            "--limit", "4", "--store", str(store), "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    if result.exit_code != 0:
        raise SystemExit(f"vlmclf {shlex.join(argv)} failed: {result.output}")
    if os.geteuid() == 0:
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(folder)],
                                   capture_output=True, text=True)  # fmt: skip
        if remounted.returncode != 0:
            raise CannotRunHere(f"cannot remount a tmpfs read-only: {remounted.stderr.strip()}")
    else:
        store.chmod(0o444)
        folder.chmod(0o555)
        session.cleanups.append(lambda: folder.chmod(0o755))
    (session.folder / "notes.sqlite").write_text("meeting notes, not a database\n")


REFUSAL = {"choices": [{"message": {"content": None, "refusal": "I can't help with that"},
                        "finish_reason": "stop"}]}  # fmt: skip


def make_pets(session: Session) -> None:
    """``pets.jsonl``: twelve small flat-colour images, cats and dogs by turns (the fake server
    below never looks at them)."""
    from PIL import Image

    folder = session.folder / "pets"
    folder.mkdir()
    rows = []
    for i in range(12):
        Image.new("RGB", (16, 16), (20 * i, 100, 200 - 10 * i)).save(folder / f"{i:02d}.png")
        rows.append((f"pets/{i:02d}.png", "cat" if i % 2 == 0 else "dog"))
    write_manifest(session.folder / "pets.jsonl", rows)


def outcomes_server(session: Session) -> None:
    """A loopback OpenAI-compatible server (the tests' fake one, tests/api_servers.py) that
    gives two empty answers and a refusal, and fails every attempt at one image during the first
    run; it recovers when the ``recover`` hook is called."""
    sys.path.insert(0, str(ROOT / "tests"))
    from api_servers import EMPTY, FakeApiServer, status

    make_pets(session)
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

    server = FakeApiServer("openai", key=None, plan=plan, answer=lambda p: "It is a cat.")
    server.__enter__()
    session.cleanups.append(lambda: server.__exit__(None, None, None))
    os.environ["VLMCLF_API_CACHE"] = str(session.folder / "api-cache.sqlite")
    session.cleanups.append(lambda: os.environ.pop("VLMCLF_API_CACHE", None))
    session.values["fake_server"] = server.base_url
    session.hooks["recover"] = lambda: phase.update(first=False)  # the server's faults end


def lease_holder(session: Session) -> None:
    """A loopback API server that never answers its fourth request, and the hooks that start a
    run on it in another process (it holds the run's lease, stuck with what it answered
    before stored), and reap that process once it is killed."""
    import sqlite3

    sys.path.insert(0, str(ROOT / "tests"))
    from api_servers import HANG, FakeApiServer

    if not (session.folder / "pets.jsonl").exists():
        make_pets(session)
    server = FakeApiServer("openai", models=("slow-model",), key=None, answer=lambda p: "A cat.",
                           plan=lambda index, prompt: HANG if index == 3 else None)  # fmt: skip
    server.__enter__()
    session.cleanups.append(lambda: server.__exit__(None, None, None))
    session.values["slow_server"] = server.base_url
    store = session.folder / "runs.sqlite"

    def stored() -> int:
        """Predictions in the store (-1 before it exists: read-only, so never created here)."""
        with contextlib.suppress(sqlite3.Error):
            db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
            with contextlib.closing(db):
                return db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        return -1

    def start() -> None:
        argv = ["eval", "--model", "openai:slow-model", "--base-url", server.base_url,
                "--dataset", "pets.jsonl", "--method", "generate", "--batch-size", "1",
                "--concurrency", "1", "--store", str(store), "--no-progress"]  # fmt: skip
        process = subprocess.Popen([sys.executable, "-m", "vlmclf.cli", *argv],
                                   cwd=session.folder, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        session.background.append(process)
        session.values["lease_pid"] = str(process.pid)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if len(server.requests) >= 4 and stored() == len(server.answered):
                return  # stuck on the request never answered, the answers before it stored
            if process.poll() is not None:
                raise RuntimeError(f"the lease holder exited ({process.returncode})")
            time.sleep(0.2)
        raise RuntimeError("the lease holder sent no four requests in 300 s")

    def reap() -> None:
        session.background[-1].wait(timeout=30)

    session.hooks["hold_lease"] = start
    session.hooks["reap"] = reap


DRIP = """import socket, sys

# a request whose body comes one byte a second: slower than --body-timeout allows
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as sock:
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\\r\\nHost: localhost\\r\\n"
                 b"Content-Type: application/json\\r\\nContent-Length: 1000\\r\\n\\r\\n")
    sock.settimeout(1.0)
    reply = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            try:
                sock.sendall(b" ")
            except OSError:
                break
            continue
        if not chunk:
            break
        reply += chunk
head, _, body = reply.decode().partition("\\r\\n\\r\\n")
print(head.splitlines()[0])
print(body)
"""


def make_drip(session: Session) -> None:
    """``drip.py``: a client that sends its request body a byte a second (a slow client);
    ``{python}``: this interpreter, which runs it."""
    (session.folder / "drip.py").write_text(DRIP)
    session.values["python"] = sys.executable


def make_threads(session: Session) -> None:
    """``clothes.jsonl`` and ``{python}``: the thread-count example runs two real processes,
    so this process's own thread count (one, for every other example) stays as it is."""
    make_clothes(session)
    session.values["python"] = sys.executable


def wandb_offline(session: Session) -> None:
    """``clothes.jsonl`` and ``{python}`` for an offline W&B run (the commands set
    ``WANDB_MODE=offline`` themselves); W&B 0.31 or newer, whose ``wandb leet inspect
    --summary`` reads the run back."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("wandb")
    except PackageNotFoundError:
        raise CannotRunHere("the wandb extra is not installed") from None
    if tuple(int(part) for part in installed.split(".")[:2]) < (0, 31):
        raise CannotRunHere(f"wandb {installed} has no `wandb leet inspect --summary`")
    make_threads(session)


def need_wordnet(session: Session) -> None:
    """Debian's WordNet, which the ImageNet hierarchy is read from."""
    from vlmclf.data.hierarchy import wordnet_available

    why = wordnet_available()
    if why is not None:
        raise CannotRunHere(why)


def free_port(session: Session) -> None:
    """``{port}`` for the server an example starts; ``{dead_port}``, where nothing listens."""
    with socket.socket() as sock, socket.socket() as other:
        sock.bind(("127.0.0.1", 0))
        other.bind(("127.0.0.1", 0))
        session.values["port"] = str(sock.getsockname()[1])
        session.values["dead_port"] = str(other.getsockname()[1])


def make_missing_layout(session: Session) -> None:
    """``cub/``: a folder meant for CUB-200 that holds none of its list files."""
    (session.folder / "cub").mkdir(exist_ok=True)


COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 220)}


def colour_png(value: int) -> bytes:
    """A 16x16 square of class ``value % 3``'s colour, its corner pixel saying its number."""
    import io

    from PIL import Image

    image = Image.new("RGB", (16, 16), list(COLOURS.values())[value % 3])
    image.putpixel((0, 0), (value, value, value))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def make_colour_sources(session: Session) -> None:
    """``wds_colours/`` (CLIP_benchmark's layout: classnames.txt, its templates file and two
    shards of the test split, written by webdataset's TarWriter) and ``hf_colours/`` (a
    ``save_to_disk`` DatasetDict with one test split): the same 12 coloured squares."""
    import io

    import datasets
    import webdataset
    from PIL import Image

    datasets.disable_progress_bars()
    root = session.folder / "wds_colours"
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(COLOURS) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n"
                                                                 "a {c} square.\n")  # fmt: skip
    for shard in range(2):
        with webdataset.TarWriter(str(root / "test" / f"{shard}.tar")) as writer:
            for value in range(6 * shard, 6 * shard + 6):
                sample = {"__key__": f"{value:05d}", "png": colour_png(value), "cls": value % 3}
                writer.write(sample)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(COLOURS))})  # fmt: skip
    images = [Image.open(io.BytesIO(colour_png(v))) for v in range(12)]
    test = datasets.Dataset.from_dict({"image": images, "label": [v % 3 for v in range(12)]},
                                      features=features)  # fmt: skip
    datasets.DatasetDict({"test": test}).save_to_disk(str(session.folder / "hf_colours"))
    os.environ["HF_DATASETS_CACHE"] = str(session.folder / "hf-cache")


def no_api_key(session: Session) -> None:
    """The OpenAI key unset for this example (it shows what happens without one), and
    ``imgs/``, an image folder, to point the commands at."""
    make_clothes(session)
    saved = os.environ.pop("OPENAI_API_KEY", None)
    if saved is not None:
        session.cleanups.append(lambda: os.environ.__setitem__("OPENAI_API_KEY", saved))


FASHION_TREE = {"t-shirt": "T-shirt/top", "T-shirt/top": "top", "Shirt": "top",
                "Pullover": "top", "top": "clothing", "Coat": "outerwear",
                "outerwear": "clothing", "Dress": "clothing", "Trouser": "clothing",
                "Ankle boot": "boot", "boot": "shoe", "Sandal": "shoe", "Sneaker": "shoe",
                "shoe": "footwear", "Bag": "accessory"}  # fmt: skip


def make_fashion_tree(session: Session) -> None:
    """``fashion_tree.json``: the small hand-written hierarchy of docs/analyses.md."""
    (session.folder / "fashion_tree.json").write_text(json.dumps(FASHION_TREE, indent=1) + "\n")


ATTRIBUTE_MODELS = {"m1": {"encoder": "vit-small", "llm": "lm-small"},
                    "m2": {"encoder": "vit-large", "llm": "lm-small"},
                    "m3": {"encoder": "vit-small", "llm": "lm-large"},
                    "m4": {"encoder": "vit-large", "llm": "lm-large"}}  # fmt: skip


def make_attribute_grid(session: Session) -> None:
    """``grid.sqlite`` (the synthetic 2x2 grid of tests/test_attribute.py: 3,000 images per
    dataset, known effects), ``diagonal.sqlite`` (only m1 and m4 of it) and
    ``components.json``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_attribute import _store_grid

    strong = {"m1": (0, 0), "m2": (1, 0), "m3": (0, 1), "m4": (1, 1)}
    _store_grid(session.folder / "grid.sqlite", strong)
    _store_grid(session.folder / "diagonal.sqlite", {m: strong[m] for m in ("m1", "m4")})
    components = {"models": ATTRIBUTE_MODELS, "groups": {"birds": "fine"}}
    (session.folder / "components.json").write_text(json.dumps(components, indent=2) + "\n")


# ---------------------------------------------------------------- output: abbreviated, masked


def json_keys(*keys: str) -> Callable[[str], str]:
    """Keep these keys of a one-line JSON summary, with "..." where others were."""

    def keep(output: str) -> str:
        data = json.loads(output)
        parts, skipped = [], False
        for key, value in data.items():
            if key in keys:
                parts.append(f"{json.dumps(key)}: {json.dumps(value)}")
                skipped = False
            elif not skipped:
                parts.append("...")
                skipped = True
        return "{" + ", ".join(parts) + "}\n"

    return keep


def head(n: int) -> Callable[[str], str]:
    """The first ``n`` lines, as ``| head -n N`` shows them."""
    return lambda output: "".join(output.splitlines(keepends=True)[:n])


def first_lines(n: int, *, last: int = 0) -> Callable[[str], str]:
    """The first ``n`` lines and the last ``last``, with "..." between."""

    def keep(output: str) -> str:
        lines = output.splitlines()
        if len(lines) <= n + last:
            return output
        return "\n".join([*lines[:n], "...", *(lines[-last:] if last else [])]) + "\n"

    return keep


def wandb_as_sent(output: str) -> str:
    """``wandb leet inspect --summary --json`` cut to what vlmclf sent: the run's project, name,
    state and config and the ``eval/`` numbers; W&B's own entries (times, file paths) are
    "..." lines."""
    data = json.loads(output)
    lines = ["{", *_kept_entries(data, lambda key: key in WANDB_SENT, "  "), "}"]
    return "\n".join(lines) + "\n"


WANDB_SENT = ("project", "name", "state", "config", "summary")


def _kept_entries(data: dict, keep: Callable[[str], bool], indent: str) -> list[str]:
    """``data``'s entries as indented JSON lines, one "..." for each run of left-out ones; the
    summary keeps only its ``eval/`` numbers."""
    items: list[list[str]] = []
    for key, value in data.items():
        if not keep(key):
            if items[-1:] != [[f"{indent}..."]]:
                items.append([f"{indent}..."])
        elif key == "summary":
            inner = _kept_entries(value, lambda k: k.startswith("eval/"), indent + "  ")
            items.append([f'{indent}"summary": {{', *inner, f"{indent}}}"])
        else:
            text = json.dumps(value, indent=2).replace("\n", "\n" + indent)
            items.append([f"{indent}{json.dumps(key)}: {text}"])
    for item in items[:-1]:  # JSON's commas between entries, none after a "..."
        if not item[-1].endswith("..."):
            item[-1] += ","
    return [line for item in items for line in item]


# an id stands alone or in a file name (``results_<id>.json``): no letter or digit either side
HEX_ID = re.compile(r"(?<![0-9A-Za-z])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{10,16}"
                    r"(?![0-9A-Za-z])")
DURATION = re.compile(r"\b\d+(?:\.\d+)?(?: ?min \d+ s| ?(?:ms|s|min)\b)")
SIZE = re.compile(r"\b\d+(?:\.\d+)? ?(KiB|MiB|KB|MB)\b")
TIMESTAMP = re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\b")
PORT = re.compile(r"(127\.0\.0\.1:|localhost:|--port )\d+")


def mask_results_seconds(text: str) -> str:
    """``vlmclf results``'s last-run times: the ``seconds`` column becomes ``<t>``."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        match = re.search(r"(?<=\s)seconds(\s+|$)", line)
        if not (line.startswith("run_id") and match):
            continue
        start, end = match.start(), (match.end() if match.group(1) else None)
        for j in range(i + 1, len(lines)):
            row = lines[j]
            if not row.strip() or len(row) <= start or row[:16].count(" ") > 0:
                break
            width = (end or len(row)) - start
            rest = row[end:] if end else ""
            lines[j] = row[:start] + "<t>".ljust(width if end else 0) + rest
    return "\n".join(lines)


def mask(text: str, session: Session) -> str:
    """The documented placeholders, in one place."""
    text = text.replace(str(session.folder) + os.sep, "").replace(str(session.folder), ".")
    text = mask_results_seconds(text)
    text = TIMESTAMP.sub("<time>", text)
    if "lease_pid" in session.values:
        text = re.sub(rf"\b{session.values['lease_pid']}\b", "<pid>", text)
    text = re.sub(rf"(?<= on host ){re.escape(socket.gethostname())}\b", "<host>", text)
    text = DURATION.sub("<t>", text)
    text = SIZE.sub(r"<size> \1", text)
    text = PORT.sub(r"\1<port>", text)
    numbering: dict[str, str] = {}

    def placeholder(match: re.Match) -> str:
        name = numbering.setdefault(match.group(), f"<id{len(numbering) + 1}>")
        in_column = match.string[match.end() : match.end() + 2] == "  "
        return name.ljust(len(match.group())) if in_column else name  # keeps a table aligned

    return HEX_ID.sub(placeholder, text)


# ---------------------------------------------------------------- running the steps

RUN_ID = re.compile(r'^run\s+([0-9a-f]{16})\s*$|"run_id": "([0-9a-f]{16})"', re.MULTILINE)


@contextlib.contextmanager
def progress_bars_off() -> Iterator[None]:
    """tqdm bars (stderr) are turned off: a terminal redraws them in place, a page cannot."""
    import tqdm.std

    original = tqdm.std.tqdm.__init__

    def quiet(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = quiet
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = original


def run_vlmclf(argv: list[str]) -> str:
    from typer.testing import CliRunner

    from vlmclf.cli import app

    with warnings.catch_warnings(), progress_bars_off():
        warnings.simplefilter("default")  # a warning shows in every example that meets it
        result = CliRunner().invoke(app, argv, prog_name="vlmclf", catch_exceptions=True)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise RuntimeError(f"vlmclf {shlex.join(argv)} crashed") from result.exception
    LAST_EXIT[0] = result.exit_code
    return result.output


LAST_EXIT = [0]  # the exit status of the last vlmclf command (what `echo $?` shows)


def start_background(command: str, session: Session) -> str:
    """``vlmclf serve ... &``: a real process; returns once its port accepts connections."""
    argv = shlex.split(command.rstrip("& "))
    assert argv[0] == "vlmclf", command
    log = session.folder / f"background-{len(session.background)}.log"
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "vlmclf.cli", *argv[1:]],
                                   cwd=session.folder, stdout=sink,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    session.background.append(process)
    port = int(session.values["port"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command} exited: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return ""
        time.sleep(0.5)
    raise RuntimeError(f"{command}: port {port} not open after 300 s")


def run_shell(command: str, session: Session) -> str:
    """A shell command (``ls``, ``head``) in the scratch folder: what a terminal shows."""
    done = subprocess.run(["bash", "-c", command], cwd=session.folder, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    return done.stdout + done.stderr


def exception_line(error: BaseException) -> str:
    """The last line of a traceback: the exception's qualified name and its message."""
    kind = type(error)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    return f"{name}: {error}"


def run_python(source: str, session: Session, *, echo: bool) -> str:
    """Python statements in the session's namespace, one at a time as an interactive session
    runs them (an expression's value is printed; an exception is its traceback's last line).
    With ``echo``, the output is the ``>>>`` session; without, the code shows and its output is
    dropped (a script's setup)."""
    import ast
    import io

    module = ast.parse(source)
    lines = source.split("\n")
    shown = []
    for statement in module.body:
        text = "\n".join(lines[statement.lineno - 1 : statement.end_lineno])
        shown.extend(f"{'>>>' if i == 0 else '...'} {line}"
                     for i, line in enumerate(text.split("\n")))  # fmt: skip
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            displayhook, sys.displayhook = sys.displayhook, lambda v: v is None or print(repr(v))
            try:
                exec(compile(text + "\n", "<docs>", "single"), session.namespace)  # noqa: S102
            except Exception as error:  # noqa: BLE001 - an error is what the page shows
                print(exception_line(error))
            finally:
                sys.displayhook = displayhook
        if buffer.getvalue():
            shown.append(buffer.getvalue().rstrip("\n"))
    return "\n".join(shown) + "\n" if echo else ""


def run_step(step: Step, session: Session) -> str:
    if step.hook:
        session.hooks[step.hook]()
        return ""
    if step.kind in ("python", "script"):
        return run_python(step.command, session, echo=step.kind == "python")
    command = step.command.format(**session.values)
    if step.kind == "shell":
        output = run_shell(command, session)
        return step.keep(output) if step.keep else output
    if step.kind == "status":
        return f"{LAST_EXIT[0]}\n"
    if command.endswith("&"):
        return start_background(command, session)
    argv = shlex.split(command)
    if argv[0] != "vlmclf":
        raise ValueError(f"only vlmclf commands are run here, not {command!r}")
    output = run_vlmclf(argv[1:])
    if step.capture:
        match = RUN_ID.search(output)
        if not match:
            raise RuntimeError(f"{command}: no run id in its output to capture:\n{output}")
        session.values[step.capture] = match.group(1) or match.group(2)
    return step.keep(output) if step.keep else output


def render(example: Example, session: Session) -> str:
    """The fenced block an example puts on its page."""
    if example.make:
        return example.make()
    if example.setup:
        example.setup(session)
    parts = []
    for step in example.steps:
        output = run_step(step, session)
        if step.hook:
            continue
        if step.kind == "python":
            parts.append(output.rstrip())
            continue
        if step.kind == "script":
            parts.append(step.command.rstrip())
            continue
        shown = (step.shown or step.command).format(**session.values)
        parts.append(f"$ {shown}\n{output.rstrip()}".rstrip())
    return mask(f"```{example.fence}\n" + "\n".join(parts) + "\n```", session)


# ---------------------------------------------------------------- the pages


def replace_block(text: str, example: Example, block: str) -> str:
    """The page with the text between the example's markers replaced by ``block`` (indented as
    the opening marker is)."""
    begin_marker, end_marker = example.markers
    begins = [m for m in re.finditer(rf"^([ \t]*){re.escape(begin_marker)}[ \t]*$", text,
                                     re.MULTILINE)]  # fmt: skip
    if len(begins) != 1:
        raise SystemExit(f"{example.page}: {len(begins)} `{begin_marker}` markers (need one)")
    begin = begins[0]
    end = text.find(end_marker, begin.end())
    if end < 0:
        raise SystemExit(f"{example.page}: `{begin_marker}` has no `{end_marker}` after it")
    indent = begin.group(1)
    body = "\n".join(indent + line if line else line for line in block.split("\n"))
    line_start = text.rfind("\n", 0, end) + 1
    return f"{text[: begin.end()]}\n{body}\n{text[line_start:]}"


def declared_markers(root: Path = ROOT) -> dict[str, str]:
    """Every ``example:NAME`` marker on the pages: name -> page."""
    found = {}
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for match in MARKER.finditer(page.read_text(encoding="utf-8")):
            found[match.group("name")] = page.relative_to(root).as_posix()
    return found


# ---------------------------------------------------------------- the examples

EVAL_KEYS = ("run_id", "n", "accuracy", "top5", "macro_f1")

def reproduce_listing() -> str:
    sys.path.insert(0, str(ROOT / "scripts"))
    from readme_reproduce import section

    return section()


PYTHON_API_SETUP = """import pandas as pd
import vlmclf

pd.set_option("display.width", 200, "display.max_columns", None,
              "display.max_colwidth", None)
vlm = vlmclf.evaluate(model="organism:vlm", dataset="fashion_mnist", method="generate",
                      limit=40, progress=False)
clip = vlmclf.evaluate(model="organism:clip", dataset="fashion_mnist", method="clip",
                       limit=40, progress=False)"""


EXAMPLES: tuple[Example, ...] = (
    # README.md: `vlmclf reproduce` prints commands (no model runs)
    Example("reproduce", "README.md", (), make=reproduce_listing),
    # docs/evaluate.md
    Example("likelihood-prefix", "docs/evaluate.md", (
        Step('vlmclf eval --model organism:vlm --dataset fashion_mnist --method likelihood '
             '--limit 40 --answer-prefix "The object in this photo is a" --json',
             keep=json_keys(*EVAL_KEYS)),
        Step('vlmclf eval --model organism:vlm --dataset fashion_mnist --method likelihood '
             '--limit 40 --answer-prefix "The object in this photo is a " --json',
             keep=json_keys(*EVAL_KEYS)),
    )),  # fmt: skip
    Example("outcomes", "docs/evaluate.md", (
        Step("vlmclf eval --model openai:test-model --base-url {fake_server} --dataset pets.jsonl "
             "--method generate --concurrency 1",
             shown="vlmclf eval --model openai:test-model --base-url {fake_server} --dataset "
                   "pets.jsonl --method generate --concurrency 1   # first run"),
        Step("", hook="recover"),
        Step("vlmclf eval --model openai:test-model --base-url {fake_server} --dataset pets.jsonl "
             "--method generate --concurrency 1",
             shown="vlmclf eval ...   # the same command, the server has recovered"),
    ), setup=outcomes_server),  # fmt: skip
    Example("random-llava", "docs/evaluate.md", (
        Step("vlmclf eval --model random:llava --dataset fashion_mnist --method generate "
             "--setting closed --k 5 --limit 20 --json"),
    )),  # fmt: skip
    Example("organism-evals", "docs/evaluate.md", (
        Step("vlmclf eval --model organism:clip --dataset fashion_mnist --method clip --limit 500",
             capture="clip"),
        Step("vlmclf eval --model organism:vlm --dataset fashion_mnist --method generate "
             "--setting closed --k 10 --limit 40 --json"),
        Step("vlmclf eval --model organism:vlm --dataset fashion_mnist --method generate "
             "--limit 40", capture="gen"),
        Step('vlmclf eval --model organism:vlm --dataset fashion_mnist --method likelihood '
             '--limit 40 --answer-prefix "The object in this photo is a"'),  # stored already
    )),  # fmt: skip
    Example("random-resnet", "docs/evaluate.md", (
        Step("vlmclf eval --model random:resnet --dataset fashion_mnist --method classifier "
             "--limit 20 --json"),
    )),  # fmt: skip
    Example("results", "docs/evaluate.md", (Step("vlmclf results"),),
            needs=("likelihood-prefix", "outcomes", "random-llava", "organism-evals",
                   "random-resnet")),  # fmt: skip
    Example("manifest-duplicate", "docs/evaluate.md", (
        Step("vlmclf eval --model random:clip --method clip --dataset dup.jsonl"),
    ), setup=make_clothes),  # fmt: skip
    Example("manifest-typos", "docs/evaluate.md", (
        Step("vlmclf eval --model random:clip --method clip --dataset typos.jsonl",
             keep=first_lines(1)),
    ), setup=make_clothes),  # fmt: skip
    Example("bad-arguments", "docs/evaluate.md", (
        Step("vlmclf eval --model random:clip --method clip --dataset clothes.jsonl "
             "--batch-size 0"),
        Step("vlmclf eval --model random:clip --method clip --dataset clothes.jsonl --k 50"),
        Step("vlmclf eval --model random:clip --method clip --dataset clothes.jsonl "
             "--device cuda"),
        Step("vlmclf eval --model random:clip --method clip --dataset clothes.jsonl "
             "--dtype fp16"),
    ), setup=make_clothes),  # fmt: skip
    # docs/store-and-reliability.md
    Example("store-problems", "docs/store-and-reliability.md", (
        Step("vlmclf results --store vlmclf-rnus.sqlite"),
        Step("vlmclf results --store notes.sqlite"),
        Step("vlmclf results --store ro/vlmclf-runs.sqlite",
             shown="vlmclf results --store ro/vlmclf-runs.sqlite      # a read-only mount"),
        Step("vlmclf eval --model random:clip --method clip --dataset clothes.jsonl --limit 4 "
             "--store ro/vlmclf-runs.sqlite"),
    ), setup=make_read_only_store),  # fmt: skip
    Example("lease", "docs/store-and-reliability.md", (
        Step("", hook="hold_lease"),
        Step("vlmclf results --store runs.sqlite"),
        Step("vlmclf eval --model openai:slow-model --base-url {slow_server} --dataset pets.jsonl "
             "--method generate --batch-size 1 --concurrency 1 --store runs.sqlite"),
        Step("echo $?", kind="status"),
        Step("kill -KILL {lease_pid}", kind="shell"),
        Step("", hook="reap"),
        Step("vlmclf results --store runs.sqlite"),
    ), setup=lease_holder),  # fmt: skip
    # docs/analyses.md
    Example("sweep", "docs/analyses.md", (
        Step("vlmclf sweep --model organism:vlm --dataset fashion_mnist --axis k=2,all "
             "--axis strategy=generate,likelihood-sum,likelihood-mean --limit 20"),
    )),  # fmt: skip
    Example("probe", "docs/analyses.md", (
        Step("vlmclf probe --model organism:vlm --dataset fashion_mnist --train-limit 200 "
             "--limit 60 --clip-model organism:clip"),
    )),  # fmt: skip
    Example("probe-output-path", "docs/analyses.md", (
        Step("vlmclf probe --model organism:vlm --dataset fashion_mnist --train-limit 200 "
             "--limit 60 --output-path probe-files --log-samples", keep=first_lines(1)),
        Step("ls probe-files", kind="shell"),
        Step("head -2 probe-files/samples_*.jsonl", kind="shell"),
    ), needs=("probe",)),  # fmt: skip
    Example("rematch", "docs/analyses.md", (
        Step("vlmclf rematch {gen} --match embed"),
    ), needs=("organism-evals",)),  # fmt: skip
    Example("report", "docs/analyses.md", (
        Step("vlmclf frequency --corpus captions.txt --classes fashion_mnist --run {gen} "
             "--out freq"),
        Step("vlmclf report --runs {clip} --runs {gen} --out-file report.html"),
    ), setup=make_captions, needs=("organism-evals",)),  # fmt: skip
    # docs/serve.md
    Example("serve", "docs/serve.md", (
        Step("vlmclf serve --model organism:vlm --port {port} &"),
        Step("vlmclf eval --model openai:organism:vlm --base-url http://127.0.0.1:{port}/v1 "
             "--dataset fashion_mnist --method generate --limit 20 --json"),
    )),  # fmt: skip
    # docs/evaluate.md: benchmark layouts, sources at scale, API configuration, output files
    Example("missing-layout-file", "docs/evaluate.md", (
        Step("vlmclf eval --model random:clip --method clip --dataset cub200 --data-root cub"),
    ), setup=make_missing_layout),  # fmt: skip
    Example("data-list", "docs/evaluate.md", (
        Step("vlmclf data list", keep=head(5), shown="vlmclf data list | head -n 5"),
    )),  # fmt: skip
    Example("sources", "docs/evaluate.md", (
        Step("vlmclf eval --model random:clip --method clip --dataset wds:wds_colours --templates "
             "wds_colours/zeroshot_classification_templates.txt --json",
             keep=json_keys("run_id", "n", "n_classes", "accuracy", "spec")),
        Step("vlmclf eval --model random:clip --method clip --dataset hf-dataset:hf_colours:test "
             "--json", keep=json_keys("run_id", "n", "n_classes", "accuracy", "spec")),
        Step("vlmclf eval --model random:clip --method clip --dataset hf-dataset:hf_colours:train"),
        Step("vlmclf eval --model random:clip --method clip --dataset "
             "'wds:wds_colours/test/{{0..2}}.tar'"),
    ), setup=make_colour_sources),  # fmt: skip
    Example("config-errors", "docs/evaluate.md", (
        Step("vlmclf eval --model openai:gpt-4o --method generate --dataset clothes.jsonl"),
        Step("vlmclf eval --model openai:qwen2-vl --base-url http://localhost:{dead_port}/v1 "
             "--method generate --dataset clothes.jsonl"),
    ), setup=no_api_key),  # fmt: skip
    Example("output-path", "docs/evaluate.md", (
        Step("vlmclf eval --model organism:vlm --dataset fashion_mnist --limit 40 --method "
             "generate --output-path results --log-samples", keep=first_lines(1)),
        Step("ls results", kind="shell"),
        Step("head -1 results/samples_*.jsonl", kind="shell"),
    ), needs=("organism-evals",)),  # fmt: skip
    Example("log-wandb", "docs/evaluate.md", (
        Step("env -u WANDB_DIR -u WANDB_PROJECT -u WANDB_ENTITY WANDB_MODE=offline "
             "WANDB_SILENT=true {python} -m vlmclf.cli eval --model random:clip --method clip "
             "--dataset clothes.jsonl --store wandb.sqlite --no-progress --output-path results "
             "--log wandb > /dev/null", kind="shell",
             shown="WANDB_MODE=offline WANDB_SILENT=true vlmclf eval --model random:clip "
             "--method clip --dataset clothes.jsonl --output-path results --log wandb > "
             "/dev/null"),
        Step("{python} -m wandb leet inspect --summary --json results/wandb/latest-run",
             kind="shell", shown="wandb leet inspect --summary --json results/wandb/latest-run",
             keep=wandb_as_sent),
        Step("cat results/wandb/latest-run/files/media/table/per_class_*.table.json; echo",
             kind="shell",
             shown="cat results/wandb/latest-run/files/media/table/per_class_*.table.json"),
    ), setup=wandb_offline),  # fmt: skip
    # docs/scale-out.md: a run resumed under another thread count is named in the warning
    Example("thread-warning", "docs/scale-out.md", (
        Step("OMP_NUM_THREADS=2 {python} -m vlmclf.cli eval --model random:clip --method clip "
             "--dataset clothes.jsonl --limit 4 --store threads.sqlite --no-progress > /dev/null",
             kind="shell", shown="OMP_NUM_THREADS=2 vlmclf eval --model random:clip --method "
             "clip --dataset clothes.jsonl --limit 4 > /dev/null"),
        Step("OMP_NUM_THREADS=1 {python} -m vlmclf.cli eval --model random:clip --method clip "
             "--dataset clothes.jsonl --store threads.sqlite --no-progress 2>&1 > /dev/null "
             "| grep 'different environment'",
             kind="shell", shown="OMP_NUM_THREADS=1 vlmclf eval --model random:clip --method "
             "clip --dataset clothes.jsonl > /dev/null"),
    ), setup=make_threads),  # fmt: skip
    # docs/python-api.md: the page's code, run
    Example("python-api-setup", "docs/python-api.md", (
        Step(PYTHON_API_SETUP, kind="script"),
    ), fence="python", needs=("organism-evals",)),  # fmt: skip
    Example("python-api-summary", "docs/python-api.md", (
        Step("print(vlm.summary['accuracy'], vlm.summary['ci95'])\n"
             "print(clip.summary['accuracy'], clip.summary['ci95'])", kind="python"),
    ), fence="python", needs=("python-api-setup",)),  # fmt: skip
    Example("python-api-predictions", "docs/python-api.md", (
        Step("df = vlm.predictions()\n"
             "df[['image', 'label_name', 'text', 'pred_name', 'hit']].head(3)", kind="python"),
    ), fence="python", needs=("python-api-setup",)),  # fmt: skip
    Example("python-api-join", "docs/python-api.md", (
        Step("both = df.merge(clip.predictions(), on='example_id', suffixes=('_vlm', '_clip'))\n"
             "pd.crosstab(both.hit_vlm, both.hit_clip)\n"
             "df.groupby('label_name').hit.mean().sort_values().head(3)", kind="python"),
    ), fence="python", needs=("python-api-predictions",)),  # fmt: skip
    Example("python-api-errors", "docs/python-api.md", (
        Step("vlmclf.evaluate(model='random:clip', dataset='imagefolder', method='clip', "
             "limit=0)\n"
             "vlmclf.evaluate(model='random:clip', dataset='imagefolder', method='clip', "
             "max_new_token=3)", kind="python"),
    ), fence="python", needs=("python-api-setup",)),  # fmt: skip
    # docs/analyses.md and README.md: error types and attribution
    Example("errors", "docs/analyses.md", (
        Step("vlmclf errors {gen} --hierarchy fashion_tree.json --out errors-out"),
    ), setup=make_fashion_tree, needs=("organism-evals",)),  # fmt: skip
    Example("errors-wordnet", "docs/analyses.md", (
        Step("from vlmclf.analysis.errors import ErrorTyper, hierarchy_for_run\n"
             "from vlmclf.data.classnames import load_class_names\n"
             "names = load_class_names('imagenet')\n"
             "typer = ErrorTyper(hierarchy_for_run(names))\n"
             "golden = names.index('Golden Retriever')\n"
             "for answer in ['a golden retriever', 'a retriever', 'a dog', "
             "'a Labrador retriever',\n"
             "               'a tabby cat', 'a blur']:\n"
             "    print(f'{answer!r:24} {typer.classify(answer, golden)}')", kind="python"),
    ), setup=need_wordnet, fence="python"),  # fmt: skip
    Example("errors-readme", "README.md", (
        Step("vlmclf errors {gen} --hierarchy fashion_tree.json --no-similarity --out errors-out"),
    ), setup=make_fashion_tree, needs=("organism-evals",)),  # fmt: skip
    Example("attribute", "docs/analyses.md", (
        Step("vlmclf attribute --store grid.sqlite --components components.json --out out"),
    ), setup=make_attribute_grid),  # fmt: skip
    Example("attribute-diagonal", "docs/analyses.md", (
        Step("vlmclf attribute --store diagonal.sqlite --components components.json --out out",
             keep=first_lines(1, last=3)),
    ), needs=("attribute",)),  # fmt: skip
    Example("attribute-organism", "docs/analyses.md", (
        Step("vlmclf eval --model organism:vlm-finetuned --dataset fashion_mnist --method "
             "generate --limit 40", keep=first_lines(1), capture="ft"),
        Step("vlmclf eval --model organism:vlm-uniform --dataset fashion_mnist --method "
             "generate --limit 40", keep=first_lines(1), capture="uniform"),
        Step("vlmclf eval --model organism:vlm-reversed --dataset fashion_mnist --method "
             "generate --limit 40", keep=first_lines(1), capture="reversed"),
        Step("vlmclf attribute --method generate"),
        Step("vlmclf attribute --runs {gen} --runs {ft} --runs {uniform} --runs {reversed} "
             "--out attribute-organism"),
    ), needs=("organism-evals",)),  # fmt: skip
    Example("serve-408", "docs/serve.md", (
        Step("{python} drip.py {port}", kind="shell", shown="python drip.py <port>"),
    ), setup=make_drip, needs=("serve",)),  # fmt: skip
    # slow: minutes each, left out of the default test (make docs-examples runs them)
    Example("finetune", "docs/analyses.md", (
        Step("vlmclf finetune --model organism:vlm --dataset fashion_mnist --train-limit 320 "
             "--step-batch-size 32 --steps 10 --lr-projector 1e-3 --limit 40 "
             "--out reports/finetune-organism"),
    ), slow=True),  # fmt: skip
    Example("demo", "docs/analyses.md", (Step("vlmclf demo"),), slow=True),
    Example("hard-choices", "docs/evaluate.md", tuple(
        Step(f"vlmclf eval --model {model} --k 4 --choices {choices} --limit 300")
        for choices in ("random", "hard-image --choice-model organism:clip")
        for model in ("organism:clip --method clip --dataset fashion_mnist",
                      "organism:vlm --method generate --setting closed --dataset fashion_mnist")
    ), slow=True),  # fmt: skip
    # docs/reproduce.md
    Example("reproduce-organism", "docs/reproduce.md", (
        Step("vlmclf reproduce table1 --model organism:vlm --clip-model organism:clip --dataset "
             "fashion_mnist --limit 20 --dtype float32 --store repro/runs.sqlite --out-file "
             "repro/table1.md --run"),
    ), slow=True),  # fmt: skip
    Example("reproduce-organism-eval", "docs/reproduce.md", (
        Step("vlmclf eval --model organism:vlm --dataset fashion_mnist --method generate "
             "--setting closed --protocol paper --store repro/runs.sqlite --dtype float32 "
             "--limit 20"),
    ), slow=True, needs=("reproduce-organism",)),  # fmt: skip
)


EXAMPLE = {example.name: example for example in EXAMPLES}


def selected(args: argparse.Namespace) -> list[Example]:
    """Every example (the slow ones unless --fast), or those --only names with what they need,
    in the declared order."""
    if not args.only:
        return [e for e in EXAMPLES if not (args.fast and e.slow)]
    unknown = set(args.only) - set(EXAMPLE)
    if unknown:
        raise SystemExit(f"no example named {', '.join(sorted(unknown))}")
    wanted, todo = set(), list(args.only)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(EXAMPLE[name].needs)
    return [e for e in EXAMPLES if e.name in wanted]


@contextlib.contextmanager
def scratch() -> Iterator[Session]:
    with tempfile.TemporaryDirectory(prefix="vlmclf-docs-") as folder:
        session = Session(Path(folder))
        before = Path.cwd()
        os.chdir(folder)
        try:
            yield session
        finally:
            os.chdir(before)
            session.close()


def generate(examples: list[Example], *, echo: bool = False) -> dict[str, str]:
    blocks = {}
    with scratch() as session:
        free_port(session)
        for example in examples:
            started, cpu = time.monotonic(), time.process_time()
            try:
                blocks[example.name] = render(example, session)
            except CannotRunHere as why:
                print(f"{example.name}: not run here, its page is left as it is: {why}",
                      file=sys.stderr)  # fmt: skip
                continue
            if echo:
                print(f"{example.name}: {time.monotonic() - started:.1f} s wall, "
                      f"{time.process_time() - cpu:.1f} s CPU", file=sys.stderr)  # fmt: skip
    return blocks


def stale(blocks: dict[str, str], root: Path = ROOT) -> list[str]:
    """A diff for each example whose page (under ``root``) shows something else."""
    problems = []
    for name, block in blocks.items():
        example = EXAMPLE[name]
        text = (root / example.page).read_text(encoding="utf-8")
        updated = replace_block(text, example, block)
        if updated != text:
            diff = difflib.unified_diff(text.splitlines(), updated.splitlines(),
                                        f"{example.page} (on the page)",
                                        f"{example.page} (generated)",
                                        lineterm="", n=1)  # fmt: skip
            problems.append(f"example {name!r} in {example.page} is stale:\n" + "\n".join(diff))
    return problems


def write(blocks: dict[str, str], root: Path = ROOT) -> None:
    for name, block in blocks.items():
        page = root / EXAMPLE[name].page
        text = page.read_text(encoding="utf-8")
        page.write_text(replace_block(text, EXAMPLE[name], block), encoding="utf-8")


def check_markers(root: Path = ROOT) -> list[str]:
    """Example markers on the pages that no example declares, and declared examples whose page
    does not hold their markers once each."""
    on_pages = declared_markers(root)
    problems = [f"{page}: marker `example:{name}` but no example of that name is declared"
                for name, page in on_pages.items() if name not in EXAMPLE]  # fmt: skip
    for example in EXAMPLES:
        text = (root / example.page).read_text(encoding="utf-8")
        for marker in example.markers:
            if text.count(marker) != 1:
                problems.append(f"{example.page}: `{marker}` appears {text.count(marker)} times "
                                f"(example {example.name!r} needs it once)")  # fmt: skip
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail on a stale example")
    parser.add_argument("--fast", action="store_true", help="leave out the slow examples")
    parser.add_argument("--only", action="append", help="this example (and what it needs)")
    parser.add_argument("--print", action="store_true", help="print the blocks, write nothing")
    parser.add_argument("--quiet", action="store_true", help="no per-example timings")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads: the same sums on every machine
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the examples show the CPU path everywhere
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["COLUMNS"] = "80"  # the width of usage errors' boxes
    problems = check_markers()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    blocks = generate(selected(args), echo=not args.quiet)  # --only: with what they need
    if args.check:
        problems = stale(blocks)
        print("\n\n".join(problems) if problems else f"{len(blocks)} examples up to date")
        return 1 if problems else 0
    if args.print:
        print("\n\n".join(blocks.values()))
        return 0
    write(blocks)
    print(f"wrote {len(blocks)} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
