"""Sources at scale: ``wds:`` (WebDataset tar shards in CLIP_benchmark's layout) and
``hf-dataset:`` (``save_to_disk`` folders and Parquet files), written here with the ecosystem's
own writers (``webdataset.TarWriter``, ``datasets``), read through ``load_dataset`` and the CLI:
ids, labels, pixels, one-line errors, the run identity, torchrun (gloo, 2 ranks) against one
process, and a SIGKILLed run resumed without duplicates or gaps.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image
from store_probe import kill_process_tree, rows_committed

from tests.test_distributed import stored_rows
from vlmclf.data import load_dataset
from vlmclf.data.readers import parse_dataset_spec
from vlmclf.data.types import BadExampleError
from vlmclf.run.identity import examples_fingerprint

wds = pytest.importorskip("webdataset", reason="the wds extra (pip install 'vlmclf[wds]')")
datasets = pytest.importorskip("datasets", reason="the hf extra (pip install 'vlmclf[hf]')")

SRC = Path(__file__).resolve().parents[1] / "src"
ENTRY = Path(__file__).with_name("dist_entry.py")
CLASSES = ["red", "green", "blue"]
COLOURS = [(220, 40, 40), (40, 190, 60), (40, 60, 220)]
TIMEOUT_S = 180


def png(value: int) -> bytes:
    """A 16x16 PNG whose colour says its class and whose corner pixel says its number."""
    image = Image.new("RGB", (16, 16), COLOURS[value % 3])
    image.putpixel((0, 0), (value, value, value))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_wds(root: Path, shards: int = 3, per_shard: int = 4, split: str = "test") -> Path:
    """CLIP_benchmark's layout: ROOT/classnames.txt, templates, ROOT/<split>/<n>.tar."""
    (root / split).mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    value = 0
    for shard in range(shards):
        with wds.TarWriter(str(root / split / f"{shard}.tar")) as writer:
            for _ in range(per_shard):
                writer.write({"__key__": f"s{shard}/{value:05d}", "png": png(value),
                              "cls": value % 3})  # fmt: skip
                value += 1
    return root


def corner(image: Image.Image) -> int:
    return image.getpixel((0, 0))[0]


# --------------------------------------------------------------------------- wds: reading


def test_wds_root_reads_every_sample_with_its_label_image_and_a_stable_id(tmp_path: Path):
    root = write_wds(tmp_path / "cifar")
    dataset = load_dataset(f"wds:{root}")
    assert (dataset.name, dataset.split, dataset.class_names) == (f"wds:{root}", "test", CLASSES)
    assert [e.id for e in dataset.examples][:2] == ["0.tar/s0/00000", "0.tar/s0/00001"]
    assert [e.label for e in dataset.examples] == [v % 3 for v in range(12)]
    assert [corner(e.load()) for e in dataset.examples] == list(range(12))
    assert dataset.examples[5].source == f"{root / 'test' / '1.tar'}#s1/00005"


def test_wds_globs_braces_and_single_shards_give_the_same_ids(tmp_path: Path):
    root = write_wds(tmp_path / "cifar")
    every = [e.id for e in load_dataset(f"wds:{root}").examples]
    assert [e.id for e in load_dataset(f"wds:{root}/test/*.tar").examples] == every
    assert [e.id for e in load_dataset(f"wds:{root}/test/{{0..2}}.tar").examples] == every
    assert [e.id for e in load_dataset(f"wds:{root}/test").examples] == every
    assert [e.id for e in load_dataset(f"wds:{root}/test/1.tar").examples] == every[4:8]
    pair = f"wds:{root}/test/0.tar::{root}/test/2.tar"
    assert [e.id for e in load_dataset(pair).examples] == every[:4] + every[8:]
    assert parse_dataset_spec(pair) == (pair, None)  # the ':' of '::' is not a split


def test_wds_split_folder_and_class_list_override(tmp_path: Path):
    root = write_wds(tmp_path / "cifar", split="train", shards=1)
    assert load_dataset(f"wds:{root}", split="train").split == "train"
    with pytest.raises(ValueError, match=r"no \.tar shards in .*cifar/test"):
        load_dataset(f"wds:{root}")
    names = tmp_path / "names.txt"
    names.write_text("rot\ngruen\nblau\n")
    renamed = load_dataset(f"wds:{root}", split="train", classes=str(names))
    assert renamed.class_names == ["rot", "gruen", "blau"]


def test_wds_structure_errors_are_one_line_naming_shard_and_key(tmp_path: Path):
    root = write_wds(tmp_path / "a", shards=1)
    (root / "classnames.txt").unlink()
    with pytest.raises(ValueError, match=r"no classnames\.txt in .*; pass --classes"):
        load_dataset(f"wds:{root}")
    bad = tmp_path / "b" / "test"
    bad.mkdir(parents=True)
    (bad.parent / "classnames.txt").write_text("x\ny\n")
    with wds.TarWriter(str(bad / "0.tar")) as writer:
        writer.write({"__key__": "k0", "png": png(0), "cls": 1})
        writer.write({"__key__": "k1", "png": png(1), "cls": 7})
    with pytest.raises(ValueError, match=r"0\.tar sample 'k1': label 7 is outside .* 2 names"):
        load_dataset(f"wds:{bad.parent}")
    with wds.TarWriter(str(bad / "0.tar")) as writer:
        writer.write({"__key__": "k0", "png": png(0)})
    with pytest.raises(ValueError, match=r"0\.tar sample 'k0': no \.cls file"):
        load_dataset(f"wds:{bad.parent}")
    with wds.TarWriter(str(bad / "0.tar")) as writer:
        writer.write({"__key__": "k0", "txt": "hello", "cls": 0})
    with pytest.raises(ValueError, match=r"sample 'k0': no image .* it has \.cls, \.txt"):
        load_dataset(f"wds:{bad.parent}")
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(f"wds:{tmp_path / 'nowhere'}")
    (bad / "0.tar").rename(bad / "0.tar.gz")
    with pytest.raises(ValueError, match=r"0\.tar\.gz is compressed"):
        load_dataset(f"wds:{bad}/*.tar.gz")


def test_a_corrupt_image_fails_alone_when_loaded(tmp_path: Path):
    folder = tmp_path / "c" / "test"
    folder.mkdir(parents=True)
    (folder.parent / "classnames.txt").write_text("x\ny\n")
    with wds.TarWriter(str(folder / "0.tar")) as writer:
        writer.write({"__key__": "good", "png": png(3), "cls": 1})
        writer.write({"__key__": "bad", "png": b"not a png at all", "cls": 0})
    good, bad = load_dataset(f"wds:{folder.parent}").examples
    assert corner(good.load()) == 3
    with pytest.raises(BadExampleError, match=r"0\.tar#bad\.png: not an image"):
        bad.load()


def test_loading_reads_one_member_not_the_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Each image is one seek and one read of its own size: the shard is never read whole."""
    import vlmclf.data.webdataset_source as source

    root = write_wds(tmp_path / "cifar", shards=1, per_shard=6)
    examples = load_dataset(f"wds:{root}").examples
    sizes: list[int] = []
    real_open = open

    class Counting:
        def __init__(self, file: io.BufferedReader) -> None:
            self.file = file

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def seek(self, offset: int) -> int:
            return self.file.seek(offset)

        def read(self, size: int) -> bytes:
            sizes.append(size)
            return self.file.read(size)

    monkeypatch.setattr(source, "open", lambda *a: Counting(real_open(*a)), raising=False)
    examples[4].load()
    with tarfile.open(root / "test" / "0.tar") as tar:
        member = tar.getmember("s0/00004.png")
    assert sizes == [member.size] == [len(png(4))]


def test_the_examples_fingerprint_follows_the_shard_files(tmp_path: Path):
    root = write_wds(tmp_path / "cifar")
    before = examples_fingerprint(load_dataset(f"wds:{root}").examples)
    assert examples_fingerprint(load_dataset(f"wds:{root}").examples) == before
    shard = root / "test" / "1.tar"
    with wds.TarWriter(str(shard)) as writer:  # same keys and labels, one image changed
        for value in range(4, 8):
            writer.write({"__key__": f"s1/{value:05d}", "png": png(value if value != 6 else 99),
                          "cls": value % 3})  # fmt: skip
    os.utime(shard, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert examples_fingerprint(load_dataset(f"wds:{root}").examples) != before


# --------------------------------------------------------------------------- hf-dataset: reading


def hf_splits(counts: dict[str, int]) -> object:
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=CLASSES)})  # fmt: skip
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"image": [Image.open(io.BytesIO(png(v))) for v in range(n)],
             "label": [v % 3 for v in range(n)]}, features=features)
        for split, n in counts.items()
    })  # fmt: skip


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the Arrow cache that Parquet is converted into inside the test's folder."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return cache


def test_save_to_disk_splits_class_label_names_and_pixels(tmp_path: Path, hf_cache: Path):
    hf_splits({"train": 4, "test": 7}).save_to_disk(tmp_path / "saved")
    test = load_dataset(f"hf-dataset:{tmp_path / 'saved'}")
    assert (test.split, test.class_names, len(test)) == ("test", CLASSES, 7)
    assert [e.id for e in test.examples][:2] == ["test/0", "test/1"]
    assert [e.label for e in test.examples] == [v % 3 for v in range(7)]
    assert [corner(e.load()) for e in test.examples] == list(range(7))
    assert test.examples[3].source.endswith("test/data-00000-of-00001.arrow#3")
    train = load_dataset(f"hf-dataset:{tmp_path / 'saved'}:train")
    assert (train.split, len(train)) == ("train", 4)
    assert load_dataset(f"hf-dataset:{tmp_path / 'saved'}", split="train").split == "train"
    with pytest.raises(ValueError, match=r"has no split 'val' \(splits: train, test\)"):
        load_dataset(f"hf-dataset:{tmp_path / 'saved'}:val")


def test_parquet_in_the_hub_layout_and_a_label_column_with_a_class_list(
    tmp_path: Path, hf_cache: Path
):
    splits = hf_splits({"train": 4, "test": 5})
    data = tmp_path / "pq" / "data"
    data.mkdir(parents=True)
    for split, table in splits.items():
        table.to_parquet(str(data / f"{split}-00000-of-00001.parquet"))
    test = load_dataset(f"hf-dataset:{tmp_path / 'pq'}")
    assert (test.split, test.class_names, len(test)) == ("test", CLASSES, 5)
    assert [corner(e.load()) for e in test.examples] == list(range(5))
    assert test.examples[2].source == f"{data / 'test-00000-of-00001.parquet'}#2"
    assert len(load_dataset(f"hf-dataset:{tmp_path / 'pq'}:train")) == 4

    plain = tmp_path / "plain.parquet"  # string labels, no ClassLabel: names from --classes
    datasets.Dataset.from_dict({
        "img": [png(v) for v in range(4)], "label": ["blue", "red", "blue", "green"],
    }).to_parquet(str(plain))  # fmt: skip
    names = tmp_path / "names.txt"
    names.write_text("red\ngreen\nblue\n")
    read = load_dataset(f"hf-dataset:{plain}", classes=str(names))
    assert [e.label for e in read.examples] == [2, 0, 2, 1]
    assert [corner(e.load()) for e in read.examples] == [0, 1, 2, 3]
    indices = tmp_path / "indices.parquet"
    datasets.Dataset.from_dict({"image": [png(0)], "label": [1]}).to_parquet(str(indices))
    with pytest.raises(ValueError, match="holds class indices but no class names.*--classes"):
        load_dataset(f"hf-dataset:{indices}")
    assert load_dataset(f"hf-dataset:{indices}", classes=str(names)).examples[0].label == 1


def test_hf_dataset_errors_name_the_path(tmp_path: Path, hf_cache: Path):
    with pytest.raises(ValueError, match=r"hf-dataset: .*nowhere does not exist"):
        load_dataset(f"hf-dataset:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a save_to_disk folder .* no .parquet files"):
        load_dataset(f"hf-dataset:{tmp_path / 'empty'}")
    no_image = tmp_path / "no_image.parquet"
    datasets.Dataset.from_dict({"text": ["a"], "label": [0]}).to_parquet(str(no_image))
    with pytest.raises(ValueError, match="no image column .*columns: text, label"):
        load_dataset(f"hf-dataset:{no_image}")


# --------------------------------------------------------------------------- through the CLI


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"), **extra}  # fmt: skip


def eval_args(dataset: str, store: Path) -> list[str]:
    return ["eval", "--model", "random:clip", "--method", "clip", "--dataset", dataset,
            "--batch-size", "2", "--store", str(store), "--json", "--no-progress"]  # fmt: skip


def run_cli(command: list[str], tmp_path: Path, **env: str) -> dict:
    done = subprocess.run(command, env=child_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (printed,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return printed


def test_torchrun_two_ranks_over_wds_store_what_one_process_stores(tmp_path: Path):
    root = write_wds(tmp_path / "cifar", shards=3, per_shard=4)
    one = tmp_path / "one.sqlite"
    run_cli([sys.executable, "-m", "vlmclf", *eval_args(f"wds:{root}", one)], tmp_path)
    two = tmp_path / "two.sqlite"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2"]  # fmt: skip
    printed = run_cli([*torchrun, "-m", "vlmclf", *eval_args(f"wds:{root}", two)], tmp_path)
    assert printed["n"] == 12
    run_id, rows = stored_rows(two)
    assert (run_id, rows) == stored_rows(one)  # same identity, rows bit for bit, same order
    assert [row["example_id"] for row in rows][:3] == ["0.tar/s0/00000", "0.tar/s0/00001",
                                                       "0.tar/s0/00002"]  # fmt: skip


def test_a_sigkilled_hf_dataset_run_resumes_without_duplicates_or_gaps(tmp_path: Path):
    hf_splits({"test": 12}).save_to_disk(tmp_path / "saved")
    spec = f"hf-dataset:{tmp_path / 'saved'}:test"
    store = tmp_path / "killed.sqlite"
    job = subprocess.Popen(
        [sys.executable, str(ENTRY), *eval_args(spec, store)],
        env=child_env(tmp_path, VLMCLF_TEST_SLEEP_S="0.5"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT_S
    while rows_committed(store) < 4 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    kill_process_tree(job.pid)  # a real SIGKILL: no handler runs
    job.wait()
    at_kill = rows_committed(store)
    assert 0 < at_kill < 12, "the kill should land part-way through the run"

    resumed = run_cli([sys.executable, "-m", "vlmclf", *eval_args(spec, store)], tmp_path)
    fresh_store = tmp_path / "fresh.sqlite"
    fresh = run_cli([sys.executable, "-m", "vlmclf", *eval_args(spec, fresh_store)], tmp_path)
    run_id, rows = stored_rows(store)
    ids = [row["example_id"] for row in rows]
    assert ids == [f"test/{row}" for row in range(12)]  # each once, in order: no gap, no repeat
    assert (run_id, rows) == stored_rows(fresh_store)
    assert resumed["accuracy"] == fresh["accuracy"] and resumed["run_id"] == fresh["run_id"]


def test_clip_benchmark_templates_file_is_read_by_templates(tmp_path: Path):
    from vlmclf.methods.prompts import load_templates

    root = write_wds(tmp_path / "cifar", shards=1)
    templates = root / "zeroshot_classification_templates.txt"
    templates.write_text("a photo of a {c}.\n\na blurry photo of the {c}.\n")
    assert load_templates(str(templates)) == ["a photo of a {}.", "a blurry photo of the {}."]
    templates.write_text("a photo.\n")
    with pytest.raises(ValueError, match=r"template 0 'a photo\.' must contain exactly one"):
        load_templates(str(templates))


def test_a_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "webdataset" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ValueError, match=r"^wds: datasets need the 'webdataset' package: "
                       r"pip install 'vlmclf\[wds\]'$"):  # fmt: skip
        load_dataset("wds:/anywhere/*.tar")
