"""Issue 9, items 1 and 2: a stored result is reused only when everything that made it is the
same, and every headline counts every example the model was asked about.

Each test first makes the situation that used to return a stale or flattering number (a
manifest relabelled in place, a second data root, an edited templates file or chat template, a
second API server, empty and refused answers, a server that fails and then recovers, CUDA OOM)
and checks the run now starts afresh, or counts, or retries.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import torch
from api_servers import EMPTY, FakeApiServer, fast_settings, status
from PIL import Image
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.data.types import Example
from vlmclf.methods import make_method
from vlmclf.metrics import summarize
from vlmclf.records import Prediction
from vlmclf.run.identity import examples_fingerprint
from vlmclf.run.runner import RunConfig, run, run_identity
from vlmclf.spec import RunSpec
from vlmclf.store import RunStore

RED, BLUE = (200, 0, 0), (0, 0, 200)


# ----- a model that needs no weights: it says "cat" for red images, "dog" otherwise ----------
class ColourMethod:
    """Predicts from the image's colour; counts its calls so tests see what was recomputed."""

    def __init__(self, class_names: list[str], calls: list[int]) -> None:
        self.class_names, self.calls = class_names, calls

    def preflight(self) -> list[str]:
        return []

    def predict(self, batch):
        self.calls.append(len(batch))
        out = []
        for item in batch:
            red = item.image.getpixel((0, 0))[0] > 100
            pred = self.class_names.index("cat" if red else "dog")
            out.append(Prediction(item.example.id, item.example.label, pred=pred, scores=None))
        return out


def colour_run(spec: RunSpec, config: RunConfig, calls: list[int], loads: list[str] | None = None):
    def load(model: str, options: object) -> object:
        if loads is not None:
            loads.append(model)
        return object()

    def build(model: object, class_names: list[str], spec: RunSpec) -> ColourMethod:
        return ColourMethod(class_names, calls)

    return run(spec, config, build, load_model=load)


def write_manifest(folder: Path, labels: dict[str, str], colours: dict[str, tuple]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in colours.items():
        Image.new("RGB", (8, 8), colour).save(folder / name)
    manifest = folder / "data.jsonl"
    manifest.write_text(
        "".join(json.dumps({"image": n, "label": labels[n]}) + "\n" for n in sorted(labels))
    )
    return manifest


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    colours = {"a.png": RED, "b.png": BLUE}
    return write_manifest(tmp_path / "data", {"a.png": "cat", "b.png": "dog"}, colours)


def clip_spec(dataset: Path | str, **extra: object) -> RunSpec:
    return RunSpec(model="fake:colour", dataset=str(dataset), method="clip", **extra)


def config_for(tmp_path: Path, **extra: object) -> RunConfig:
    return RunConfig(store_path=tmp_path / "runs.sqlite", progress=False, **extra)


# ----- item 1: identity is content -----------------------------------------------------------
def test_manifest_relabelled_in_place_starts_a_new_run(manifest: Path, tmp_path: Path):
    calls: list[int] = []
    first = colour_run(clip_spec(manifest), config_for(tmp_path), calls)
    assert first.summary["accuracy"] == 1.0
    manifest.write_text(  # the same file, the labels corrected (swapped)
        json.dumps({"image": "a.png", "label": "dog"}) + "\n"
        + json.dumps({"image": "b.png", "label": "cat"}) + "\n"
    )  # fmt: skip
    second = colour_run(clip_spec(manifest), config_for(tmp_path), calls)
    assert second.run_id != first.run_id and second.newly_done == 2
    assert second.summary["accuracy"] == 0.0  # main reported the stale 1.0


def test_unchanged_command_resumes_without_loading_the_model(manifest: Path, tmp_path: Path):
    calls: list[int] = []
    loads: list[str] = []
    first = colour_run(clip_spec(manifest), config_for(tmp_path), calls, loads)
    again = colour_run(clip_spec(manifest), config_for(tmp_path), calls, loads)
    assert again.run_id == first.run_id and again.newly_done == 0
    assert loads == ["fake:colour"] and calls == [2]


def test_a_larger_limit_extends_the_same_run(tmp_path: Path):
    calls: list[int] = []
    spec = clip_spec(_many(tmp_path, 6))
    small = colour_run(spec, config_for(tmp_path, limit=2), calls)
    large = colour_run(spec, config_for(tmp_path, limit=4), calls)
    assert large.run_id == small.run_id and large.newly_done == 2
    assert {p.example_id for p in small.predictions} < {p.example_id for p in large.predictions}


def test_probe_feature_cache_key_follows_the_examples(manifest: Path):
    from vlmclf.analysis.probe.features import make_key
    from vlmclf.data import load_dataset

    def key() -> str:
        examples = load_dataset(str(manifest)).examples
        return make_key("random:clip", str(manifest), "test", examples, "image_embedding").digest()

    before = key()
    assert key() == before
    examples = load_dataset(str(manifest)).examples
    made = make_key("random:clip", str(manifest), "test", examples, "image_embedding")
    assert json.loads(made.preprocessing)["exif_orientation"] is True  # decoding is in the key
    manifest.write_text(manifest.read_text().replace('"cat"', '"tmp"').replace('"dog"', '"cat"')
                        .replace('"tmp"', '"dog"'))  # fmt: skip
    assert key() != before  # relabelled in place: the cached labels would be stale


def test_a_second_data_root_is_a_different_run(tmp_path: Path):
    def folder(root: Path, colour: tuple) -> Path:
        for name in ("cat", "dog"):
            (root / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), colour).save(root / name / "x.png")
        return root

    reds, blues = folder(tmp_path / "one", RED), folder(tmp_path / "two", BLUE)
    calls: list[int] = []
    spec = clip_spec("imagefolder")
    first = colour_run(spec, config_for(tmp_path, data_root=str(reds)), calls)
    second = colour_run(spec, config_for(tmp_path, data_root=str(blues)), calls)
    assert first.run_id != second.run_id and second.newly_done == 2
    assert (first.summary["accuracy"], second.summary["accuracy"]) == (0.5, 0.5)
    assert [p.pred for p in second.predictions] == [1, 1]  # blue: dog, from the new images


def test_edited_templates_file_is_a_different_run(manifest: Path, tmp_path: Path):
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps(["a photo of a {}."]))
    calls: list[int] = []
    first = colour_run(clip_spec(manifest, templates=str(templates)), config_for(tmp_path), calls)
    templates.write_text(json.dumps(["a photo of a {}.", "a drawing of a {}."]))
    second = colour_run(clip_spec(manifest, templates=str(templates)), config_for(tmp_path), calls)
    assert first.run_id != second.run_id and second.newly_done == 2


def test_image_max_side_and_verify_images(manifest: Path, tmp_path: Path):
    spec, config = clip_spec(manifest), config_for(tmp_path)
    from vlmclf.data import load_dataset

    def run_id(**extra: object) -> str:
        from dataclasses import replace

        from vlmclf.run.identity import identity_run_id
        from vlmclf.run.loading import ModelOptions

        cfg = replace(config, **{k: v for k, v in extra.items() if k != "side"})
        cfg.model = ModelOptions(image_max_side=extra.get("side"))
        dataset = load_dataset(str(manifest))
        return identity_run_id(run_identity(spec, cfg, dataset.class_names, dataset.examples)[0])

    plain = run_id()
    assert run_id(side=256) != plain
    image = manifest.parent / "a.png"
    stat = image.stat()
    Image.new("RGB", (8, 8), (201, 0, 0)).save(image)  # same size on disk, other bytes
    assert image.stat().st_size == stat.st_size
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run_id() == plain  # size and mtime cannot see it...
    before = run_id(verify_images=True)
    Image.new("RGB", (8, 8), RED).save(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run_id(verify_images=True) != before  # ...hashing the bytes does


def test_examples_fingerprint_covers_labels_paths_and_prompts(tmp_path: Path):
    image = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(image)

    def example(**changes: object) -> Example:
        fields = {"id": "x", "label": 0, "split": "test", "source": str(image), "loader": None}
        return Example(**{**fields, **changes})  # type: ignore[arg-type]

    base = examples_fingerprint([example()])
    assert examples_fingerprint([example()]) == base
    hashed = tmp_path / "a#1.png"  # a '#' in a file name is not an IDX record index
    Image.new("RGB", (4, 4)).save(hashed)
    twin = [example(source=str(hashed)), example(id="y", source=str(tmp_path / "a#2.png"))]
    other = examples_fingerprint(twin)
    Image.new("RGB", (4, 4)).save(tmp_path / "a#2.png")
    assert examples_fingerprint(twin) != other
    for changed in ({"label": 1}, {"split": "val"}, {"id": "y"}, {"prompt": "Q?"},
                    {"source": str(tmp_path / "missing.png")}):  # fmt: skip
        assert examples_fingerprint([example(**changed)]) != base, changed


def test_edited_chat_template_changes_the_resolved_prompt(tmp_path: Path):
    """An hf: folder whose chat template is edited: the prompt sent changes, so does the id."""
    from vlmclf.models.random_models import random_spec

    folder = tmp_path / "qwen"  # config and processor only: the prompt never needs the weights
    built = random_spec("qwen2_vl")
    built.config.save_pretrained(folder)
    built.processor.save_pretrained(folder)
    (tmp_path / "img").mkdir()
    manifest = write_manifest(tmp_path / "img", {"a.png": "cat", "b.png": "dog"},
                              {"a.png": RED, "b.png": BLUE})  # fmt: skip
    spec = RunSpec(model=f"hf:{folder}", dataset=str(manifest), method="generate")
    from vlmclf.data import load_dataset

    dataset = load_dataset(str(manifest))

    def identity() -> tuple[dict, dict]:
        return run_identity(spec, config_for(tmp_path), dataset.class_names, dataset.examples)

    before, shown = identity()
    assert "What type of object is in this photo?" in shown["resolved_prompt"]
    edited = 0
    for path in folder.iterdir():
        if path.name.startswith("chat_template") or path.name == "tokenizer_config.json":
            text = path.read_text()
            if "<|im_start|>" in text:
                path.write_text(text.replace("<|im_start|>", "<|im_begin|>"))
                edited += 1
    assert edited
    after, shown_after = identity()
    assert "<|im_begin|>" in shown_after["resolved_prompt"]
    assert after["prompts"] != before["prompts"]


def test_environment_change_on_resume_warns_once(manifest, tmp_path, monkeypatch):
    import vlmclf.run.runner as runner

    calls: list[int] = []
    colour_run(clip_spec(manifest), config_for(tmp_path), calls)
    real = runner.environment_facts
    monkeypatch.setattr(runner, "environment_facts", lambda d: {**real(d), "torch": "0.0.1"})
    warnings: list[str] = []
    result = run(clip_spec(manifest), config_for(tmp_path),
                 lambda m, c, s: ColourMethod(c, calls), on_warning=warnings.append,
                 load_model=lambda *_: object())  # fmt: skip
    assert result.newly_done == 0 and len(warnings) == 1
    assert "different environment" in warnings[0] and "0.0.1" in warnings[0]


def test_results_json_shows_the_identity(manifest: Path, tmp_path: Path):
    calls: list[int] = []
    result = colour_run(clip_spec(manifest), config_for(tmp_path), calls)
    out = CliRunner().invoke(app, ["results", "--store", str(tmp_path / "runs.sqlite"),
                                   "--format", "json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.stdout)
    assert row["run_id"] == result.run_id and row["legacy_identity"] is False
    assert row["identity"]["examples"] and row["identity"]["templates"]
    assert row["environment"]["python"] and row["denominator"].startswith("2 answers of 2")


def test_v2_store_stays_readable_and_never_matches_a_new_identity(manifest, tmp_path):
    """A store written by schema 2: its run is listed as it was and a new run does not reuse it."""
    path = tmp_path / "runs.sqlite"
    spec = clip_spec(manifest)
    from vlmclf.store.run_store import _SCHEMA_V1, _SCHEMA_V2, APPLICATION_ID

    db = sqlite3.connect(path)
    db.executescript(_SCHEMA_V1 + _SCHEMA_V2)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO runs VALUES (?, ?, ?, 'done', 2, 't', 't', 1.0, '{}')",
               (spec.run_id, spec.canonical_json(), json.dumps(["cat", "dog"])))  # fmt: skip
    for eid, ok in (("a.png", 1), ("b.png", 0)):
        db.execute(
            "INSERT INTO predictions (run_id, example_id, seq, label, ok, pred, error)"
            " VALUES (?, ?, 0, 0, ?, 0, ?)",
            (spec.run_id, eid, ok, None if ok else "bad"),
        )
    db.commit()
    db.close()
    with RunStore(path) as store:
        (legacy,) = store.list_runs()
        assert legacy.identity is None and legacy.status == "done" and legacy.n_failed == 1
        assert [p.outcome for p in store.predictions(spec.run_id)] == ["answer", "data_failure"]
    calls: list[int] = []
    fresh = colour_run(spec, RunConfig(store_path=path, progress=False), calls)
    assert fresh.run_id != spec.run_id and fresh.newly_done == 2


# ----- item 2: every headline counts every example -------------------------------------------
def test_summary_counts_empty_and_refused_answers_as_wrong():
    names = ["cat", "dog"]
    preds = [
        Prediction("1", 0, text="a cat", pred=0, hit=True),
        Prediction("2", 0, text="", pred=None, hit=False, flag="empty"),
        Prediction("3", 1, text="", pred=None, hit=False, flag="refused"),
        Prediction("4", 1, text="no idea", pred=None, hit=False),
        Prediction.failed("5", 0, "unreadable"),
        Prediction.transient("6", 1, "gave up after 3 attempts"),
    ]
    summary = summarize(preds, names)
    # the slow way: the headline is over the four answers; accuracy_all over all six
    answers = [p for p in preds if p.outcome == "answer"]
    assert summary["accuracy"] == sum(bool(p.hit) for p in answers) / len(answers) == 0.25
    assert summary["accuracy_all"] == pytest.approx(1 / 6)
    assert (summary["n_answers"], summary["n_empty"], summary["n_refused"]) == (4, 1, 1)
    assert (summary["n_unparsed"], summary["n_data_failed"], summary["n_transient"]) == (1, 1, 1)
    assert summary["provisional"] is True
    assert summary["denominator"].startswith("4 answers of 6 examples (1 empty, 1 refused")


def _api_loader(cache: Path, **settings: object):
    from vlmclf.models.api import load_api_model

    def load(spec: str, options) -> object:
        fast = fast_settings(_Server(options.base_url), cache, **settings)
        return load_api_model(spec, **fast)

    return load


class _Server:  # what fast_settings reads of a server
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url


def api_config(tmp_path: Path, server: FakeApiServer, **extra: object) -> RunConfig:
    from vlmclf.run.loading import ModelOptions

    return config_for(tmp_path, model=ModelOptions(base_url=server.base_url), **extra)


def api_spec(manifest: Path) -> RunSpec:
    return RunSpec(model="openai:test-model", dataset=str(manifest), method="generate")


def test_a_second_api_server_is_a_different_run(manifest, tmp_path):
    load = _api_loader(tmp_path / "api-cache.sqlite")
    with FakeApiServer("openai", key=None, answer=lambda p: "a cat") as one:
        first = run(api_spec(manifest), api_config(tmp_path, one), make_method, load_model=load)
    with FakeApiServer("openai", key=None, answer=lambda p: "a dog") as two:
        second = run(api_spec(manifest), api_config(tmp_path, two), make_method, load_model=load)
        sent = len(two.chat_requests)
    assert first.run_id != second.run_id and sent == 2  # main resumed and sent 0
    assert [p.text for p in second.predictions] == ["a dog", "a dog"]


def test_empty_and_refused_api_answers_count_as_wrong(manifest, tmp_path):
    refusal = {"choices": [{"message": {"content": None, "refusal": "I can't help"},
                            "finish_reason": "stop"}]}  # fmt: skip
    faults = {0: EMPTY, 1: status(200, body=json.dumps(refusal).encode())}
    more = write_manifest(manifest.parent, {"a.png": "cat", "b.png": "dog", "c.png": "cat"},
                          {"c.png": RED})  # fmt: skip
    load = _api_loader(tmp_path / "api-cache.sqlite", concurrency=1)
    with FakeApiServer("openai", key=None, by_index=faults, answer=lambda p: "a cat") as server:
        result = run(api_spec(more), api_config(tmp_path, server, batch_size=1), make_method,
                     load_model=load)  # fmt: skip
    summary = result.summary
    assert (summary["n_answers"], summary["n_empty"], summary["n_refused"]) == (3, 1, 1)
    assert summary["n_failed"] == 0 and summary["accuracy"] == pytest.approx(1 / 3)
    flagged = {p.flag for p in result.predictions}
    assert flagged == {"empty", "refused", None}


def test_a_recovering_server_gets_the_failed_examples_again(manifest, tmp_path):
    """One server that fails every request during the first run and answers during the second."""
    broken = {"on": True}
    load = _api_loader(tmp_path / "api-cache.sqlite", max_retries=1)
    plan = lambda i, p: status(503) if broken["on"] else None  # noqa: E731
    with FakeApiServer("openai", key=None, plan=plan, answer=lambda p: "a cat") as server:
        first = run(api_spec(manifest), api_config(tmp_path, server), make_method, load_model=load)
        assert first.summary["n_transient"] == 2 and first.summary["provisional"]
        broken["on"] = False
        second = run(api_spec(manifest), api_config(tmp_path, server), make_method,
                     load_model=load)  # fmt: skip
    assert second.run_id == first.run_id and second.newly_done == 2
    assert second.summary["n_transient"] == 0 and not second.summary["provisional"]
    assert second.summary["accuracy"] == 0.5
    with RunStore(tmp_path / "runs.sqlite") as store:
        assert store.get_run(first.run_id).status == "done"


class OomMethod(ColourMethod):
    """Out of memory for batches larger than ``fits`` (0: even one example does not fit)."""

    def __init__(self, class_names: list[str], calls: list[int], fits: int) -> None:
        super().__init__(class_names, calls)
        self.fits = fits

    def predict(self, batch):
        if len(batch) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().predict(batch)


def _many(tmp_path: Path, n: int) -> Path:
    labels = {f"{i}.png": "cat" if i % 2 else "dog" for i in range(n)}
    colours = {name: RED if label == "cat" else BLUE for name, label in labels.items()}
    return write_manifest(tmp_path / "many", labels, colours)


def test_cuda_out_of_memory_halves_the_batch(tmp_path: Path):
    calls: list[int] = []
    config = config_for(tmp_path, batch_size=8)
    result = run(
        clip_spec(_many(tmp_path, 8)),
        config,
        lambda m, c, s: OomMethod(c, calls, fits=2),
        load_model=lambda *_: object(),
    )
    assert result.summary["n_answers"] == 8 and result.summary["accuracy"] == 1.0
    assert calls == [2, 2, 2, 2]  # 8 and 4 did not fit; the rest of the run used 2


def test_out_of_memory_at_one_example_is_transient_and_retried(tmp_path: Path):
    calls: list[int] = []
    spec, config = clip_spec(_many(tmp_path, 2)), config_for(tmp_path, batch_size=2)
    first = run(spec, config, lambda m, c, s: OomMethod(c, calls, fits=0),
                load_model=lambda *_: object())  # fmt: skip
    assert first.summary["n_transient"] == 2 and first.summary["provisional"]
    assert "out of memory" in first.predictions[0].error
    second = run(spec, config, lambda m, c, s: OomMethod(c, calls, fits=2),
                 load_model=lambda *_: object())  # fmt: skip
    assert second.newly_done == 2 and second.summary["accuracy"] == 1.0


def test_model_runtime_error_is_transient(manifest: Path, tmp_path: Path):
    class Broken(ColourMethod):
        def predict(self, batch):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    result = run(clip_spec(manifest), config_for(tmp_path), lambda m, c, s: Broken(c, []),
                 load_model=lambda *_: object())  # fmt: skip
    assert result.summary["n_transient"] == 2
    assert "illegal memory access" in result.predictions[0].error


def test_data_failures_stay_done_unless_retry_failed(manifest: Path, tmp_path: Path):
    """A file that failed to decode for a reason the identity cannot see (here: repaired in
    place with its size and mtime kept) is asked again only with --retry-failed."""
    image = manifest.parent / "b.png"
    good = image.read_bytes()
    stat = image.stat()
    image.write_bytes(b"x" * len(good))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    calls: list[int] = []
    first = colour_run(clip_spec(manifest), config_for(tmp_path), calls)
    assert (first.summary["n_data_failed"], first.summary["accuracy"]) == (1, 1.0)
    assert first.summary["accuracy_all"] == 0.5 and not first.summary["provisional"]
    image.write_bytes(good)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = colour_run(clip_spec(manifest), config_for(tmp_path), calls)
    assert again.run_id == first.run_id and again.newly_done == 0  # data failures are done
    retried = colour_run(clip_spec(manifest), config_for(tmp_path, retry_failed=True), calls)
    assert retried.run_id == first.run_id and retried.newly_done == 1
    assert retried.summary["n_data_failed"] == 0 and retried.summary["accuracy"] == 1.0


def test_flags_of_answer_texts():
    from vlmclf.methods.outcomes import flag_of_text
    from vlmclf.models.api.errors import ApiAnswer

    assert flag_of_text("") == flag_of_text("  \n") == "empty"
    assert flag_of_text("a cat") is None
    assert flag_of_text(ApiAnswer("a ca", {"truncated": True})) == "truncated"


def test_eval_cli_relabelled_manifest_reports_the_new_labels(manifest: Path, tmp_path: Path):
    """Through the real CLI and a tiny random CLIP: the relabelled manifest is a second run."""
    args = ["eval", "--model", "random:clip", "--dataset", str(manifest), "--method", "clip",
            "--store", str(tmp_path / "s.sqlite"), "--json", "--no-progress"]  # fmt: skip
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    manifest.write_text(manifest.read_text().replace('"cat"', '"tmp"').replace('"dog"', '"cat"')
                        .replace('"tmp"', '"dog"'))  # fmt: skip
    second = CliRunner().invoke(app, [*args, "--verify-images", "--retry-failed"])
    assert second.exit_code == 0, second.output
    one, two = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (first, second))
    assert one["run_id"] != two["run_id"]
    assert one["accuracy"] + two["accuracy"] == pytest.approx(1.0)  # every answer flips


def test_eval_table_names_the_denominator_and_marks_provisional(manifest, tmp_path):
    from vlmclf.report.summary import summary_table

    summary = summarize([Prediction("1", 0, pred=0), Prediction.transient("2", 1, "timeout")],
                        ["cat", "dog"])  # fmt: skip
    table = summary_table("r", clip_spec(manifest), summary, "s.sqlite")
    assert "1 answers of 2 examples" in table and "PROVISIONAL" in table
    assert "1 transient failures" in table


def test_store_replaces_failures_but_never_an_answer(tmp_path: Path):
    with RunStore(tmp_path / "s.sqlite") as store:
        store.start_run("r", "{}", ["cat", "dog"], 3)
        store.add_predictions("r", [Prediction("a", 0, pred=0),
                                    Prediction.failed("b", 1, "unreadable"),
                                    Prediction.transient("c", 1, "timeout")])  # fmt: skip
        store.finish_run("r", "done", 0.0)
        assert store.get_run("r").status == "incomplete" and store.get_run("r").n_transient == 1
        assert store.done_ids("r") == {"a", "b"}
        assert store.done_ids("r", retry_data_failures=True) == {"a"}
        later = [Prediction.transient("a", 0, "oom"), Prediction.transient("b", 1, "oom"),
                 Prediction("c", 1, pred=1)]  # fmt: skip
        assert store.add_predictions("r", later) == 1  # only the transient c is replaced
        assert store.add_predictions("r", [Prediction("b", 1, pred=1)]) == 1
        by_id = {p.example_id: p for p in store.predictions("r")}
        assert [by_id[i].outcome for i in "abc"] == ["answer", "answer", "answer"]
        assert [p.example_id for p in store.predictions("r")] == ["a", "b", "c"]  # order kept
        assert store.get_run("r").status == "done"
        with pytest.raises(ValueError, match="outcome"):
            store.add_predictions("r", [Prediction("d", 0, outcome="lost")])  # type: ignore[arg-type]


def test_hub_revision_is_read_from_the_local_cache(tmp_path: Path, monkeypatch):
    from huggingface_hub import constants

    from vlmclf.run.identity import weights_fingerprint

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert weights_fingerprint("hf:org/model") is None
    refs = tmp_path / "models--org--model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("abc123\n")
    assert weights_fingerprint("hf:org/model") == "rev:abc123"
    assert weights_fingerprint("random:llava") is None


def test_an_input_the_api_rejects_is_a_data_failure(manifest: Path, tmp_path: Path):
    """A 400 for one image (too large, invalid) is the input's failure: shown, not retried."""
    load = _api_loader(tmp_path / "api-cache.sqlite", concurrency=1)
    with FakeApiServer("openai", key=None, by_index={0: status(400)},
                       answer=lambda p: "a cat") as server:  # fmt: skip
        config = api_config(tmp_path, server, batch_size=1)
        first = run(api_spec(manifest), config, make_method, load_model=load)
        again = run(api_spec(manifest), config, make_method, load_model=load)
        sent = len(server.chat_requests)
    assert (first.summary["n_data_failed"], first.summary["n_transient"]) == (1, 0)
    assert not first.summary["provisional"] and again.newly_done == 0 and sent == 2


def test_a_v2_store_read_only_is_listed_and_exported_without_upgrading(manifest, tmp_path):
    """`results` and `export` open stores read-only (no upgrade): schema 2 must still read."""
    path = tmp_path / "runs.sqlite"
    spec = clip_spec(manifest)
    from vlmclf.store.run_store import _SCHEMA_V1, _SCHEMA_V2, APPLICATION_ID

    db = sqlite3.connect(path)
    db.executescript(_SCHEMA_V1 + _SCHEMA_V2)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO runs VALUES (?, ?, ?, 'done', 2, 't', 't', 1.0, '{}')",
               (spec.run_id, spec.canonical_json(), json.dumps(["cat", "dog"])))  # fmt: skip
    db.execute("INSERT INTO predictions (run_id, example_id, seq, label, ok, error)"
               " VALUES (?, 'b.png', 0, 1, 0, 'bad')", (spec.run_id,))  # fmt: skip
    db.commit()
    db.close()
    out = CliRunner().invoke(app, ["results", "--store", str(path), "--format", "json"])
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.stdout)
    assert row["legacy_identity"] is True and row["identity"] is None and row["n_transient"] == 0
    exported = tmp_path / "out.jsonl"
    out = CliRunner().invoke(app, ["export", spec.run_id[:8], "--store", str(path),
                                   "--out-file", str(exported)])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert json.loads(exported.read_text())["outcome"] == "data_failure"
    with RunStore(path, read_only=True) as store:
        assert store.schema_version == 2 and store.done_ids(spec.run_id) == {"b.png"}
