"""Does the VLM's hidden state know the class? (paper, Section 4.1, Table 3 "probing" rows)

``run_probe`` extracts a language-model layer's hidden state for the paper's prompt at the last
token and averaged over all tokens (cached per model, layer, prompt, dtype, dataset, split and
example selection, in resumable chunks), trains a probe on each, reporting both the best test
epoch (the paper's rule) and a validation-chosen result (clean), optionally does
the same for a CLIP model's image embeddings, stores the result (``save_analysis("probe", ...)``)
and writes its table and figure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vlmclf.analysis.probe.chunks import DEFAULT_CHUNK_EXAMPLES
from vlmclf.analysis.probe.config import CLEAN_LABEL, PAPER_LABEL, REPORTED, ProbeConfig
from vlmclf.analysis.probe.features import FeatureKind, FeatureSet, cached_features
from vlmclf.analysis.probe.ranks import cached_features_across_ranks
from vlmclf.analysis.probe.report import write_probe_report
from vlmclf.analysis.probe.train import probe_both_protocols
from vlmclf.data import load_dataset
from vlmclf.data.readers import parse_dataset_spec
from vlmclf.data.types import Dataset
from vlmclf.methods.prompts import open_question
from vlmclf.run.distributed import every_rank, is_distributed, is_main_process
from vlmclf.run.identity import environment_facts
from vlmclf.run.loading import ModelOptions, load_any_model
from vlmclf.run.run_files import image_path
from vlmclf.run.runner import select_examples
from vlmclf.store import RunStore

__all__ = ["CLEAN_LABEL", "PAPER_LABEL", "ProbeConfig", "ProbeOutcome", "ProbeRequest", "run_probe"]


@dataclass(frozen=True)
class ProbeRequest:
    """What decides a probe result (stored as the analysis spec)."""

    model: str
    dataset: str
    train_split: str = "train"
    eval_split: str | None = None
    train_dataset: str | None = None
    data_root: str | None = None
    train_data_root: str | None = None
    classes: str | None = None
    layer: int = -1
    prompt: str = "base"
    train_limit: int | None = None
    limit: int | None = None
    clip_model: str | None = None
    config: ProbeConfig = field(default_factory=ProbeConfig)
    clip_epochs: int | None = None  # the CLIP baseline's epochs when not ``config.epochs``
    clip_l2_normalize: bool = False  # the CLIP baseline on L2-normalised embeddings (paper)
    protocol: str = "clean"  # the table the settings were resolved from (paper/probe_settings)
    dtype: str = "float32"  # the model's compute dtype while extracting (part of the feature key)
    prompt_template: str | None = None  # a protocol's prompt ({image}, {question}); None: family's
    positions: str = "real"  # the mean over real tokens, or over all positions (the paper's code)

    def spec(self) -> dict[str, Any]:
        """The stored spec; the prompt and pooling fields only where a protocol set them, so the
        analyses stored before they existed keep their ids."""
        spec = asdict(self)
        if self.prompt_template is None:
            del spec["prompt_template"]
        if self.positions == "real":
            del spec["positions"]
        return spec


@dataclass(frozen=True)
class ProbeRuntime:
    """How to run it; none of it changes the result."""

    store_path: Path = Path("vlmclf-runs.sqlite")
    out_dir: Path | None = None
    cache_dir: Path | None = None
    batch_size: int = 16
    workers: int = 2
    chunk_size: int = DEFAULT_CHUNK_EXAMPLES  # examples per resumable feature chunk
    progress: bool = False
    model_options: ModelOptions = field(default_factory=ModelOptions)


@dataclass(frozen=True)
class ProbePredictions:
    """One probe's prediction for each evaluated example (kept out of the stored result: a
    class index per example and probe would multiply its size)."""

    model: str
    features: str  # the pooling: last_token, mean, embedding
    protocol: str  # paper or clean
    ids: list[str]
    labels: list[int]
    predicted: list[int]


@dataclass
class ProbeOutcome:
    analysis_id: str
    result: dict[str, Any]
    files: dict[str, Path]
    eval_ids: list[str] = field(default_factory=list)
    """The evaluated examples' ids, in the order of each protocol's ``correct`` string."""
    predictions: list[ProbePredictions] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    """Evaluated example id -> its image's path."""


def probe_sample_rows(outcome: ProbeOutcome) -> Iterator[dict[str, Any]]:
    """The samples log (``--log-samples``): one line per evaluated example and probe (model,
    features, protocol), with the image's path, the label's and the prediction's names."""
    names = outcome.result["class_names"]
    for probe in outcome.predictions:
        rows = zip(probe.ids, probe.labels, probe.predicted, strict=True)
        for example_id, label, pred in rows:
            yield {
                "example_id": example_id, "image": outcome.sources.get(example_id),
                "label": label, "label_name": names[label], "model": probe.model,
                "features": probe.features, "protocol": probe.protocol, "pred": pred,
                "pred_name": names[pred], "hit": pred == label,
            }  # fmt: skip


def _take_predictions(
    result: dict[str, Any], tests: list[tuple[str, FeatureSet]]
) -> list[ProbePredictions]:
    """Every protocol's per-example predictions, removed from ``result`` (which is stored);
    ``tests``: (model, evaluated features) of the VLM, then of the CLIP baseline."""
    blocks = [result["features"]]
    if "clip_baseline" in result:
        blocks.append(result["clip_baseline"]["features"])
    taken = []
    for (model, test), block in zip(tests, blocks, strict=True):
        labels = test.labels.tolist()
        for pooling, found in block.items():
            for protocol, outcome in found["protocols"].items():
                predicted = outcome.pop("predicted")
                taken.append(ProbePredictions(model, pooling, protocol, list(test.ids), labels,
                                              predicted))  # fmt: skip
    return taken


ModelLoader = Callable[[str], object]


def load_probe_data(request: ProbeRequest) -> tuple[Dataset, Dataset]:
    """(train, eval) datasets with the same class list."""
    name, spec_split = parse_dataset_spec(request.dataset)
    eval_split = request.eval_split or spec_split
    eval_data = load_dataset(name, request.data_root, eval_split, request.classes)
    train_name = request.train_dataset or name
    train_root = request.train_data_root or request.data_root
    train_data = load_dataset(train_name, train_root, request.train_split, request.classes)
    if list(train_data.class_names) != list(eval_data.class_names):
        raise ValueError(
            f"the training data ({train_name}:{request.train_split}) and the evaluation data "
            f"({name}:{eval_data.split}) have different class lists; pass --classes"
        )
    return train_data, eval_data


class _LazyModels:
    """Load each model spec at most once, and only if a feature cache misses."""

    def __init__(self, loader: ModelLoader) -> None:
        self.loader = loader
        self.loaded: dict[str, object] = {}

    def getter(self, spec: str) -> Callable[[], object]:
        def get() -> object:
            if spec not in self.loaded:
                self.loaded[spec] = self.loader(spec)
            return self.loaded[spec]

        return get


def _features(
    spec: str, data: Dataset, request: ProbeRequest, runtime: ProbeRuntime, models: _LazyModels,
    kind: FeatureKind, limit: int | None,
) -> FeatureSet | None:  # fmt: skip
    """The features from the cache or extracted; under torchrun every rank extracts its share
    of the missing chunks and only the main rank gets the set (None elsewhere)."""
    examples = select_examples(data, limit)
    extract = cached_features_across_ranks if is_distributed() else cached_features
    return extract(
        spec, data.name, data.split, examples, models.getter(spec), kind,
        layer=request.layer, question=open_question(request.prompt), dtype=request.dtype,
        cache_dir=runtime.cache_dir, batch_size=runtime.batch_size, workers=runtime.workers,
        chunk_size=runtime.chunk_size, progress=runtime.progress,
        **_prompt_options(request, kind),
    )  # fmt: skip


def _prompt_options(request: ProbeRequest, kind: FeatureKind) -> dict[str, Any]:
    """The protocol's prompt and pooling for the VLM's hidden states (not CLIP embeddings)."""
    if kind != "hidden":
        return {}
    return {"prompt_template": request.prompt_template, "positions": request.positions}


def _with_prompt(loader: ModelLoader, request: ProbeRequest) -> ModelLoader:
    """``loader`` that gives the probed VLM the protocol's prompt template, if it has one."""
    if request.prompt_template is None:
        return loader

    def load(spec: str) -> object:
        model = loader(spec)
        if spec == request.model:
            if not hasattr(model, "prompt_template"):
                raise ValueError(f"{spec}: this model takes no prompt template")
            model.prompt_template = request.prompt_template  # type: ignore[attr-defined]
        return model

    return load


def _all_features(
    request: ProbeRequest, runtime: ProbeRuntime, loader: ModelLoader, train_data: Dataset,
    eval_data: Dataset,
) -> list[FeatureSet] | None:  # fmt: skip
    """[train, eval] hidden states, then [train, eval] CLIP embeddings with ``clip_model``;
    None off the main rank of a torchrun job, whose part ends with the extraction."""
    models = _LazyModels(loader)
    wanted = [(request.model, "hidden")]
    if request.clip_model:
        wanted.append((request.clip_model, "image_embedding"))
    found = []
    for spec, kind in wanted:
        for data, limit in ((train_data, request.train_limit), (eval_data, request.limit)):
            found.append(_features(spec, data, request, runtime, models, kind, limit))  # type: ignore[arg-type]
    if not is_main_process():
        return None
    return found  # type: ignore[return-value]


def probe_feature_sets(
    train: FeatureSet, test: FeatureSet, n_classes: int, config: ProbeConfig
) -> dict[str, dict[str, Any]]:
    """For each pooling: both protocols, the feature dimension and the sizes."""
    out = {}
    for pooling, train_x in train.features.items():
        protocols = probe_both_protocols(
            (train_x.float(), train.labels), (test.features[pooling].float(), test.labels),
            n_classes, config,
        )  # fmt: skip
        out[pooling] = {
            "dim": int(train_x.shape[1]),
            "n_train": int(train.labels.numel()),
            "n_eval": int(test.labels.numel()),
            "protocols": protocols,
        }
    return out


def l2_normalized(features: FeatureSet) -> FeatureSet:
    """The same set with every feature vector scaled to unit length (the paper's CLIP probe)."""
    scaled = {
        name: torch.nn.functional.normalize(x.float(), dim=-1)
        for name, x in features.features.items()
    }
    return replace(features, features=scaled)


def _feature_summary(train: FeatureSet, test: FeatureSet) -> dict[str, Any]:
    return {
        "n_failed": {"train": train.n_failed, "eval": test.n_failed},
        "failed_examples": (train.failures + test.failures)[:20],
        "cache_files": [str(train.path), str(test.path)],
        "from_cache": {"train": train.from_cache, "eval": test.from_cache},
        "n_extracted": {"train": train.n_extracted, "eval": test.n_extracted},
    }


def training_settings(request: ProbeRequest) -> dict[str, Any]:
    """The settings that decide the numbers, as the report prints them."""
    config = request.config
    return {
        "features": "standardised" if config.standardize else "raw",
        "shuffle": "each epoch" if config.shuffle == "each-epoch"
        else f"once (Python random, seed {config.shuffle_seed})",
        "epochs": config.epochs,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "reported": config.reported,
        "dtype": request.dtype,
    }  # fmt: skip


def _overlap_warning(train: FeatureSet, test: FeatureSet, same_source: bool) -> list[str]:
    shared = set(train.ids) & set(test.ids) if same_source else set()
    if not shared:
        return []
    return [f"{len(shared)} examples are in both the training and the evaluation selection"]


def run_probe(
    request: ProbeRequest,
    runtime: ProbeRuntime | None = None,
    load_model: ModelLoader | None = None,
) -> ProbeOutcome | None:
    """Extract (or reuse) features, probe them under both protocols, store and report.

    Under torchrun every rank extracts its share of the missing feature chunks, then the main
    rank alone trains the probes, stores and reports; the others return None."""
    runtime = runtime or ProbeRuntime()
    options = replace(runtime.model_options, dtype=request.dtype)
    loader = _with_prompt(load_model or (lambda spec: load_any_model(spec, options)), request)
    train_data, eval_data = every_rank(lambda: load_probe_data(request))
    features = _all_features(request, runtime, loader, train_data, eval_data)
    if features is None:  # a torchrun rank other than the main one: its extraction is done
        return None
    train, test = features[:2]
    n_classes = len(eval_data.class_names)
    same_source = (request.train_dataset in (None, request.dataset)) and (
        (request.train_data_root or request.data_root) == request.data_root
    )
    result: dict[str, Any] = {
        "model": request.model,
        "dataset": parse_dataset_spec(request.dataset)[0],
        "train_split": train_data.split,
        "eval_split": eval_data.split,
        "layer": request.layer,
        "question": open_question(request.prompt),
        "prompt_template": request.prompt_template,
        "positions": request.positions,
        "head": request.config.head(),
        "protocol": request.protocol,
        "settings": training_settings(request),
        "reported": REPORTED[request.config.reported],
        "protocol_labels": {"paper": PAPER_LABEL, "clean": CLEAN_LABEL},
        "class_names": list(eval_data.class_names),
        "features": probe_feature_sets(train, test, n_classes, request.config),
        **_feature_summary(train, test),
        "warnings": _overlap_warning(train, test, same_source),
    }
    tests = [(request.model, test)]
    if request.clip_model:
        clip_train, clip_test = features[2:]
        tests.append((request.clip_model, clip_test))
        if request.clip_l2_normalize:
            clip_train, clip_test = l2_normalized(clip_train), l2_normalized(clip_test)
        clip_config = replace(request.config, epochs=request.clip_epochs or request.config.epochs)
        result["clip_baseline"] = {
            "model": request.clip_model,
            "epochs": clip_config.epochs,
            "l2_normalized": request.clip_l2_normalize,
            "features": probe_feature_sets(clip_train, clip_test, n_classes, clip_config),
            **_feature_summary(clip_train, clip_test),
        }
    predictions = _take_predictions(result, tests)
    result["environment"] = environment_facts(options.device)  # versions, threads: beside it
    with RunStore(runtime.store_path) as store:
        analysis_id = store.save_analysis("probe", request.spec(), result)
    out_dir = runtime.out_dir or Path("reports") / f"probe-{analysis_id}"
    files = write_probe_report(result, out_dir)
    files["json"] = out_dir / "probe.json"
    files["json"].write_text(json.dumps({"analysis_id": analysis_id, **result}, indent=2) + "\n")
    sources = {example.id: image_path(example.source) for example in eval_data.examples}
    return ProbeOutcome(analysis_id, result, files, list(test.ids), predictions, sources)
