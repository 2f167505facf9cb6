"""vlmclf probe: feature cache, both protocols, the CLIP baseline, the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from fixtures_data import write_noisy_colour_folder
from output_files import read_output_files
from typer.testing import CliRunner

from vlmclf.analysis.probe.config import CLEAN_LABEL
from vlmclf.analysis.probe.features import (
    cached_features,
    extract_features,
    feature_cache_dir,
    load_feature_file,
)
from vlmclf.analysis.probe.run import (
    PAPER_LABEL,
    ProbeConfig,
    ProbeRequest,
    ProbeRuntime,
    run_probe,
)
from vlmclf.analysis.probe.train import (
    clean_protocol,
    paper_protocol,
    stratified_split,
    train_probe,
)
from vlmclf.commands.probe import probe_command
from vlmclf.data import load_dataset
from vlmclf.models import load_model
from vlmclf.store import RunStore

QUESTION = "What type of object is in this photo?"


def write_colour_folder(root: Path, per_class: int, seed: int) -> Path:
    return write_noisy_colour_folder(root, per_class, seed, noise=45)


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("colours")
    train = write_colour_folder(base / "train", per_class=14, seed=1)
    test = write_colour_folder(base / "test", per_class=6, seed=2)
    (test / "red" / "broken.png").write_bytes(b"this is not a png")
    return {"train": train, "test": test}


@pytest.fixture(scope="module")
def llava():
    return load_model("random:llava")


class CountingModel:
    """Wraps a VLM and counts hidden_features calls (to prove the cache skips the model)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    def hidden_features(self, images, questions, layer=-1):
        self.calls += 1
        return self.inner.hidden_features(images, questions, layer)


def test_feature_cache_written_once_then_reused_without_the_model(colour_data, llava, tmp_path):
    data = load_dataset("imagefolder", str(colour_data["test"]))
    counting = CountingModel(llava)
    loads = []

    def get_model():
        loads.append(1)
        return counting

    first = cached_features("random:llava", data.name, data.split, data.examples, get_model,
                            "hidden", layer=-1, question=QUESTION, cache_dir=tmp_path,
                            batch_size=4, workers=1)  # fmt: skip
    assert not first.from_cache and counting.calls > 0 and len(loads) == 1
    files = list(tmp_path.rglob("*.safetensors"))
    assert files == [first.path]
    calls = counting.calls
    second = cached_features("random:llava", data.name, data.split, data.examples, get_model,
                             "hidden", layer=-1, question=QUESTION, cache_dir=tmp_path,
                             batch_size=4, workers=1)  # fmt: skip
    assert second.from_cache and counting.calls == calls and len(loads) == 1
    assert second.ids == first.ids
    assert torch.equal(second.labels, first.labels)
    for name in ("last_token", "mean"):
        assert torch.allclose(second.features[name], first.features[name])
    # another layer is another key: a new file, the model is called again
    cached_features("random:llava", data.name, data.split, data.examples, get_model, "hidden",
                    layer=1, question=QUESTION, cache_dir=tmp_path, workers=1)  # fmt: skip
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2 and counting.calls > calls


def test_failed_images_are_skipped_and_counted(colour_data, llava):
    data = load_dataset("imagefolder", str(colour_data["test"]))
    features = extract_features(llava, data.examples, "hidden", question=QUESTION, batch_size=5)
    assert features.n_failed == 1
    assert features.failures[0]["id"] == "red/broken.png"
    assert "not an image" in features.failures[0]["reason"]
    assert len(features.ids) == len(data.examples) - 1 == features.features["mean"].shape[0]
    assert features.features["last_token"].shape[1] == llava.text_config.hidden_size


def test_cached_file_reads_back_selected_poolings(colour_data, llava, tmp_path):
    data = load_dataset("imagefolder", str(colour_data["train"]))
    examples = list(data.examples)[:6]
    made = cached_features("random:llava", data.name, data.split, examples, lambda: llava,
                           "hidden", question=QUESTION, cache_dir=tmp_path)  # fmt: skip
    only_mean = load_feature_file(made.path, poolings=["mean"])
    assert list(only_mean.features) == ["mean"]
    assert torch.allclose(only_mean.features["mean"], made.features["mean"])
    with pytest.raises(ValueError, match="no features named"):
        load_feature_file(made.path, poolings=["cls"])


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VLMCLF_CACHE_DIR", str(tmp_path))
    assert feature_cache_dir() == tmp_path / "features"


def test_stratified_split_holds_out_each_class():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 2)
    fit, val = stratified_split(labels, 0.2, seed=0)
    assert set(fit).isdisjoint(val) and len(fit) + len(val) == 17
    held = labels[torch.as_tensor(val)].tolist()
    assert held.count(0) == 2 and held.count(1) == 1 and held.count(2) == 1


def _blobs(n_per_class: int, seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(123)) * 2
    labels = torch.arange(4).repeat_interleave(n_per_class)
    return centres[labels] + noise * torch.randn(len(labels), 16, generator=generator), labels


def test_protocols_are_deterministic_and_labelled():
    train, test = _blobs(20, 0, 2.0), _blobs(20, 1, 2.0)
    config = ProbeConfig(epochs=20, batch_size=16)
    paper = paper_protocol(train, test, 4, config)
    assert paper == paper_protocol(train, test, 4, config)
    assert paper["label"] == PAPER_LABEL and "optimistic" in paper["label"]
    # the reported epoch is the best test epoch, at least as good as the last one
    assert paper["accuracy"] >= paper["final_epoch_accuracy"]
    curve = train_probe(*train, 4, epochs=20, config=config, watch=test).epoch_scores
    assert paper["accuracy"] == pytest.approx(max(curve))
    assert paper["chosen"]["epoch"] == int(np.argmax(curve)) + 1
    clean = clean_protocol(train, test, 4, config)
    assert clean["label"] == CLEAN_LABEL and not clean["selects_on_eval_data"]
    assert [row["weight_decay"] for row in clean["grid"]] == list(config.weight_decays)
    assert clean["chosen"]["val_accuracy"] == max(row["val_accuracy"] for row in clean["grid"])
    assert clean["n_fit"] + clean["n_val"] == clean["n_train"] == 80
    assert clean["accuracy"] > 0.25 + 0.2  # 4 classes
    assert clean["ci95"][0] <= clean["accuracy"] <= clean["ci95"][1]


def test_run_probe_with_clip_baseline_and_mlp(colour_data, llava, tmp_path):
    request = ProbeRequest(
        model="random:llava", dataset="imagefolder", train_split="train", eval_split="test",
        data_root=str(colour_data["test"]), train_data_root=str(colour_data["train"]),
        clip_model="random:clip", config=ProbeConfig(epochs=15, mlp_hidden=32),
    )  # fmt: skip
    runtime = ProbeRuntime(store_path=tmp_path / "runs.sqlite", out_dir=tmp_path / "out",
                           cache_dir=tmp_path / "cache", batch_size=8, workers=1)  # fmt: skip
    loaded = []

    def load(spec: str):
        loaded.append(spec)
        return llava if spec == "random:llava" else load_model(spec)

    outcome = run_probe(request, runtime, load_model=load)
    assert loaded == ["random:llava", "random:clip"]  # each model once, for both splits
    result = outcome.result
    assert result["head"] == "mlp(32)"
    baseline = result["clip_baseline"]["features"]["embedding"]
    assert baseline["dim"] == 32 and baseline["n_eval"] == 18
    for protocol in ("paper", "clean"):
        assert baseline["protocols"][protocol]["accuracy"] > 1 / 3 + 0.3
    csv_text = outcome.files["csv"].read_text()
    assert "image embedding probing (CLIP baseline)" in csv_text
    with RunStore(tmp_path / "runs.sqlite") as store:
        stored = store.get_analysis(outcome.analysis_id)
    assert stored is not None and stored.kind == "probe"
    assert stored.result["clip_baseline"]["model"] == "random:clip"


def test_probe_rejects_a_clip_model_as_the_vlm(colour_data, tmp_path):
    request = ProbeRequest(model="random:clip", dataset="imagefolder", train_split="train",
                           data_root=str(colour_data["test"]),
                           train_data_root=str(colour_data["train"]))  # fmt: skip
    runtime = ProbeRuntime(store_path=tmp_path / "s.sqlite", out_dir=tmp_path / "o",
                           cache_dir=tmp_path / "c", workers=1)  # fmt: skip
    with pytest.raises(ValueError, match="exposes no hidden states"):
        run_probe(request, runtime)


def test_probe_command_end_to_end_reports_both_protocols(colour_data, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMCLF_CACHE_DIR", str(tmp_path / "cache"))
    app = typer.Typer()
    app.command()(probe_command)
    args = ["--model", "random:llava", "--dataset", "imagefolder", "--eval-split", "test",
            "--data-root", str(colour_data["test"]), "--train-data-root", str(colour_data["train"]),
            "--epochs", "15", "--store", str(tmp_path / "runs.sqlite"),
            "--out", str(tmp_path / "out"),
            "--no-progress", "--workers", "1"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["n_failed"] == {"train": 0, "eval": 1}
    for pooling in ("last_token", "mean"):
        block = payload["features"][pooling]
        assert block["n_train"] == 42 and block["n_eval"] == 18 and block["dim"] == 64
        assert block["protocols"]["paper"]["label"] == PAPER_LABEL
        assert block["protocols"]["clean"]["label"] == CLEAN_LABEL
        for protocol in ("paper", "clean"):
            assert block["protocols"][protocol]["accuracy"] > 1 / 3 + 0.3
    for name in ("markdown", "csv", "figure", "json"):
        assert Path(payload["files"][name]).is_file()
    assert Path(payload["files"]["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the second run reads every feature from the cache and prints the table
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "paper protocol† (%)" in again.stdout and "last token probing" in again.stdout
    assert "selects the epoch on the evaluation data: optimistic" in again.stdout
    assert "probe.png" in again.stdout


def test_probe_command_bad_option_is_a_clear_error(tmp_path):
    app = typer.Typer()
    app.command()(probe_command)
    result = CliRunner().invoke(app, ["--model", "random:llava", "--dataset", "fashion_mnist",
                                      "--weight-decays", "0,abc"])  # fmt: skip
    assert result.exit_code == 2
    assert "--weight-decays must be comma-separated numbers" in result.output


# ------------------------------------------------------------------ the paper's probe settings


def paper_code_probe(x, y, n_classes: int, epochs: int, init_seed: int) -> torch.nn.Linear:
    """The paper's training loop, written out independently: its data shuffled once with
    Python's random (seed 1234), raw features, Adam lr 1e-3, batches of 512 in that one order."""
    import random

    rows = list(range(len(y)))
    random.seed(1234)
    random.shuffle(rows)
    x, y = x[rows], y[rows]
    torch.manual_seed(init_seed)
    model = torch.nn.Linear(x.shape[1], n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    for _ in range(epochs):
        for i in range(0, len(x), 512):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 512]), y[i : i + 512]).backward()
            optimizer.step()
    return model


def test_paper_settings_train_exactly_like_the_paper_code():
    x, y = _blobs(300, 0, 2.0)  # 1,200 rows: three batches of 512, the last one short
    x = x * 5 + 40  # far from standardised: raw and standardised training differ
    config = ProbeConfig(epochs=3, standardize=False, shuffle="once", shuffle_seed=1234)
    ours = train_probe(x, y, 4, epochs=3, config=config).model
    theirs = paper_code_probe(x, y, 4, epochs=3, init_seed=config.seed)
    assert torch.allclose(ours.weight, theirs.weight, atol=1e-6)
    assert torch.allclose(ours.bias, theirs.bias, atol=1e-6)
    clean = train_probe(x, y, 4, epochs=3, config=ProbeConfig(epochs=3)).model
    assert not torch.allclose(clean.weight, theirs.weight, atol=1e-3)
    reshuffled = ProbeConfig(epochs=3, standardize=False)
    other = train_probe(x, y, 4, epochs=3, config=reshuffled).model
    assert not torch.allclose(other.weight, theirs.weight, atol=1e-4)  # the order matters


def test_protocol_resolves_the_probe_settings():
    from vlmclf.paper.probe_settings import protocol_probe_values

    paper = protocol_probe_values("paper", "flowers102")
    assert (paper["epochs"], paper["standardize"], paper["shuffle"], paper["shuffle_seed"]) == (
        500, False, "once", 1234)  # fmt: skip
    assert (paper["reported"], paper["dtype"], paper["lr"]) == ("best-test-epoch", "bfloat16", 1e-3)
    assert protocol_probe_values("paper", "imagenet:val")["epochs"] == 100
    clean = protocol_probe_values("clean", "imagenet")
    assert (clean["epochs"], clean["standardize"], clean["shuffle"], clean["reported"]) == (
        50, True, "each-epoch", "validation")  # fmt: skip
    with pytest.raises(ValueError, match="--reported must be one of"):
        ProbeConfig(reported="test")


def test_probe_command_under_the_paper_protocol_records_and_prints_it(colour_data, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    monkeypatch.setenv("VLMCLF_CACHE_DIR", str(tmp_path / "cache"))
    app = typer.Typer()
    app.command()(probe_command)
    args = ["--model", "random:llava", "--dataset", "imagefolder", "--eval-split", "test",
            "--data-root", str(colour_data["test"]), "--train-data-root", str(colour_data["train"]),
            "--protocol", "paper", "--epochs", "4", "--dtype", "float32",
            "--store", str(tmp_path / "runs.sqlite"), "--out", str(tmp_path / "out"),
            "--no-progress", "--workers", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Protocol paper: raw features (float32), shuffled once (Python random, seed 1234)." \
           in result.stdout  # explicit --dtype wins over the protocol
    assert "Paper protocol's probe: Adam lr 0.001, batch " in result.stdout
    assert ", 4 epochs" in result.stdout  # explicit --epochs wins over the protocol
    assert "Reported: the paper protocol's column (best test epoch" in result.stdout
    with RunStore(tmp_path / "runs.sqlite") as store:
        [analysis] = [a for a in store.list_analyses() if a.kind == "probe"]
    spec = analysis.spec
    assert (spec["protocol"], spec["dtype"]) == ("paper", "float32")
    config = spec["config"]
    assert (config["standardize"], config["shuffle"]) == (False, "once")
    assert config["shuffle_seed"] == 1234
    assert (config["reported"], config["epochs"]) == ("best-test-epoch", 4)
    assert analysis.result["reported"] == "paper"
    assert analysis.result["settings"]["features"] == "raw"


def test_clean_linear_probe_converges_and_its_grid_matters():
    """Every grid value reaches its optimum (small gradient), the optima differ (a stronger
    penalty: a larger objective and smaller weights), and a zero decay is refused."""
    from vlmclf.analysis.probe.convex import GRADIENT_TOLERANCE

    train, test = _blobs(30, 0, 3.0), _blobs(10, 1, 3.0)
    config = ProbeConfig(weight_decays=(1e-3, 1e-2, 1e-1, 1.0))
    clean = clean_protocol(train, test, 4, config)
    grid = clean["grid"]
    assert all(row["converged"] and row["max_gradient"] < GRADIENT_TOLERANCE for row in grid)
    objectives = [row["objective"] for row in grid]
    assert objectives == sorted(objectives) and len(set(objectives)) == len(objectives)
    assert clean["chosen"]["all_converged"] and clean["chosen"]["epoch"] is None
    assert clean == clean_protocol(train, test, 4, config)  # deterministic
    with pytest.raises(ValueError, match="weight decays > 0"):
        clean_protocol(train, test, 4, ProbeConfig(weight_decays=(0.0, 1e-2)))


def test_clean_linear_probe_matches_scikit_learn():
    """Independent: scikit-learn's L2 logistic regression on the same standardised features
    (its C = 1 / (n * wd) gives the same objective up to scale) finds the same optimum."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    from vlmclf.analysis.probe.config import standardiser
    from vlmclf.analysis.probe.convex import fit_logistic

    x, y = _blobs(25, 2, 4.0)
    mean, std = standardiser(x)
    xs = (x - mean) / std
    weight_decay = 0.05
    ours, info = fit_logistic(xs, y, 4, weight_decay)
    c = 1 / (len(y) * weight_decay)
    theirs = linear_model.LogisticRegression(C=c, tol=1e-10, max_iter=10_000)
    theirs.fit(xs.numpy(), y.numpy())
    assert info["converged"]
    np.testing.assert_allclose(ours.weight.numpy(), theirs.coef_, atol=2e-3)
    # biases are fixed only up to a shared constant (softmax ignores it): compare probabilities
    probabilities = torch.softmax(ours(xs), dim=1).numpy()
    np.testing.assert_allclose(probabilities, theirs.predict_proba(xs.numpy()), atol=2e-3)


def test_paper_clip_baseline_settings_follow_the_papers_code():
    from vlmclf.paper.probe_settings import clip_baseline_values

    assert clip_baseline_values("paper", "imagenet") == (40, True)
    assert clip_baseline_values("paper", "fashion_mnist") == (300, True)
    assert clip_baseline_values("clean", "imagenet") == (None, False)


def test_clip_baseline_trains_on_unit_vectors_for_its_own_epochs(
    colour_data, llava, tmp_path, monkeypatch
):
    import vlmclf.analysis.probe.run as probe_run

    seen = []
    original = probe_run.probe_feature_sets

    def recording(train, test, n_classes, config):
        seen.append((train, test, config))
        return original(train, test, n_classes, config)

    monkeypatch.setattr(probe_run, "probe_feature_sets", recording)
    request = ProbeRequest(
        model="random:llava", dataset="imagefolder", train_split="train", eval_split="test",
        data_root=str(colour_data["test"]), train_data_root=str(colour_data["train"]),
        clip_model="random:clip", config=ProbeConfig(epochs=4), clip_epochs=9,
        clip_l2_normalize=True,
    )  # fmt: skip
    runtime = ProbeRuntime(store_path=tmp_path / "runs.sqlite", out_dir=tmp_path / "out",
                           cache_dir=tmp_path / "cache", batch_size=8, workers=1)  # fmt: skip
    outcome = run_probe(
        request, runtime, load_model=lambda s: llava if s == "random:llava" else load_model(s)
    )
    (vlm_train, _, vlm_config), (clip_train, clip_test, clip_config) = seen
    assert vlm_config.epochs == 4 and clip_config.epochs == 9
    for features in (clip_train, clip_test):
        norms = features.features["embedding"].norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert not torch.allclose(
        vlm_train.features["mean"].norm(dim=-1), torch.ones(len(vlm_train.ids)), atol=1e-3
    )
    baseline = outcome.result["clip_baseline"]
    assert baseline["epochs"] == 9 and baseline["l2_normalized"] is True
    assert "CLIP baseline (random:clip): L2-normalised image embeddings, 9 epochs." in (
        outcome.files["markdown"].read_text()
    )



def test_probe_output_path_writes_results_and_a_line_per_example_and_probe(
    colour_data, tmp_path, monkeypatch, torch_threads_restored
):
    monkeypatch.setenv("VLMCLF_CACHE_DIR", str(tmp_path / "cache"))
    app = typer.Typer()
    app.command()(probe_command)
    out, store = tmp_path / "files", tmp_path / "runs.sqlite"
    args = ["--model", "random:llava", "--dataset", "imagefolder", "--eval-split", "test",
            "--data-root", str(colour_data["test"]), "--train-data-root", str(colour_data["train"]),
            "--epochs", "4", "--train-limit", "15", "--limit", "8", "--store", str(store),
            "--out", str(tmp_path / "report"), "--no-progress", "--workers", "1", "--threads", "2",
            "--json",
            "--output-path", str(out), "--log-samples"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    analysis_id = payload["analysis_id"]
    results, lines = read_output_files(out, analysis_id)
    with RunStore(store, read_only=True) as runs:
        stored = runs.get_analysis(analysis_id)
    assert results["kind"] == "probe" and results["status"] == "done"
    assert results["identity"] == {"kind": "probe", "spec": stored.spec}
    assert results["summary"]["features"] == payload["features"]
    assert results["protocol"]["name"] == "clean" and results["protocol"]["epochs"] == 4
    assert results["threads"] == 2 and results["versions"]["torch_threads"] == "2"
    assert results["versions"]["torch"] and "vlmclf_git_revision" in results
    assert "predicted" not in json.dumps(stored.result)  # per-example predictions: files only

    n_eval = payload["features"]["mean"]["n_eval"]
    assert n_eval >= 7 and len(lines) == n_eval * 4  # 2 poolings x 2 protocols
    for pooling in ("last_token", "mean"):
        for protocol in ("paper", "clean"):
            rows = [r for r in lines if (r["features"], r["protocol"]) == (pooling, protocol)]
            bits = "".join("1" if r["hit"] else "0" for r in rows)
            assert bits == payload["features"][pooling]["protocols"][protocol]["correct"]
    for row in lines:
        assert row["model"] == "random:llava" and row["hit"] == (row["pred"] == row["label"])
        image = Path(row["image"])
        assert image.is_absolute() and image == (colour_data["test"] / row["example_id"])
        assert row["label_name"] == image.parent.name
        assert row["pred_name"] == payload["class_names"][row["pred"]]


def test_probe_log_samples_needs_output_path_and_stops_before_work(colour_data, tmp_path):
    app = typer.Typer()
    app.command()(probe_command)
    args = ["--model", "random:llava", "--dataset", "imagefolder", "--data-root",
            str(colour_data["test"]), "--store", str(tmp_path / "s.sqlite"), "--log-samples"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--log-samples writes into --output-path DIR" in result.output
    assert not (tmp_path / "s.sqlite").exists()
