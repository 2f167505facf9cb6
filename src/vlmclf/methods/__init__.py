"""Ways of classifying an image; ``make_method`` picks one for a RunSpec."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from vlmclf.methods.base import LoadedExample, Method
from vlmclf.models.base import ImageTextEncoder
from vlmclf.records import Prediction
from vlmclf.spec import RunSpec

__all__ = [
    "LoadedExample",
    "Method",
    "finalize_prediction_chunks",
    "finalize_predictions",
    "make_method",
    "needs_finalizing",
]


def _kind(model: object) -> str:
    from vlmclf.models.image_classifier import ImageClassifier

    if isinstance(model, ImageClassifier):
        return "a supervised image classifier"
    return "a CLIP-style encoder" if isinstance(model, ImageTextEncoder) else "a generative model"


def check_label_set_size(k: int | None, class_names: list[str]) -> None:
    """``--k`` must leave a choice: between 2 and the number of distinct class names."""
    from vlmclf.data import unique_class_indices

    n_distinct = len(unique_class_indices(class_names))
    if k is not None and not 2 <= k <= n_distinct:
        raise ValueError(
            f"--k must be in [2, {n_distinct}] (the dataset's distinct class names), got {k}; "
            "leave --k out to offer every class"
        )


def _make_classifier_method(model: object, class_names: list[str], spec: RunSpec) -> Method:
    from vlmclf.methods.classifier import ClassifierMethod
    from vlmclf.models.image_classifier import ImageClassifier

    if not isinstance(model, ImageClassifier):
        raise ValueError(
            f"--method classifier needs a supervised image classifier (an hf: "
            f"*ForImageClassification checkpoint, random:resnet, random:vit); {spec.model} is "
            f"{_kind(model)}"
        )
    return ClassifierMethod(model, class_names, spec)


def make_method(model: object, class_names: list[str], spec: RunSpec) -> Method:
    """The method object for ``spec.method``, checked against what the model can do."""
    check_label_set_size(spec.k, class_names)
    from vlmclf.models.image_classifier import ImageClassifier

    if spec.method == "classifier":
        return _make_classifier_method(model, class_names, spec)
    if isinstance(model, ImageClassifier):
        raise ValueError(
            f"--method {spec.method}: {spec.model} is a supervised image classifier "
            "(use --method classifier)"
        )
    if spec.method == "clip":
        if not isinstance(model, ImageTextEncoder):
            raise ValueError(
                f"--method clip needs a CLIP-style model; {spec.model} is {_kind(model)} "
                "(use --method generate)"
            )
        from vlmclf.methods.prompts import load_templates
        from vlmclf.methods.zeroshot import ZeroShotMethod

        return ZeroShotMethod(model, class_names, spec, load_templates(spec.templates))
    if isinstance(model, ImageTextEncoder):
        raise ValueError(
            f"--method {spec.method} needs a generative VLM; {spec.model} is {_kind(model)} "
            "(use --method clip)"
        )
    use_prompt_template(model, spec)
    if spec.method == "generate":
        from vlmclf.methods.answer_mapping import with_answer_mapping
        from vlmclf.methods.generate import GenerateMethod

        return with_answer_mapping(GenerateMethod(model, class_names, spec), class_names, spec)
    if spec.method == "likelihood":
        from vlmclf.methods.likelihood.method import LikelihoodMethod

        return LikelihoodMethod(model, class_names, spec)
    raise ValueError(
        f"--method: unknown method {spec.method!r}; "
        "accepted: clip, generate, likelihood, classifier"
    )


def use_prompt_template(model: object, spec: RunSpec) -> None:
    """Give the model the run's prompt template (the one hook where prompts are formatted) and
    the marker its answers are read after (``options["answer_marker"]``, the paper's reading)."""
    marker = spec.options.get("answer_marker")
    if hasattr(model, "answer_marker"):  # reset too: a model may serve several runs
        model.answer_marker = None if marker is None else str(marker)  # type: ignore[attr-defined]
    elif marker is not None:
        raise ValueError(
            f"{spec.model}: the answer cannot be read after {marker!r} (the protocol's reading "
            "of the whole decoded sequence needs an hf: or random: model)"
        )
    if not hasattr(model, "prompt_template"):
        if spec.prompt_template is not None:
            raise ValueError(
                f"--prompt-template: {spec.model} formats its own prompts and takes no template"
            )
        return
    model.prompt_template = spec.prompt_template  # type: ignore[attr-defined]


def finalize_predictions(
    spec: RunSpec, predictions: list[Prediction], class_names: list[str]
) -> list[Prediction]:
    """Predictions as the summary should see them once the whole run is in.

    Only likelihood scoring with dataset-mean calibration changes anything: its prior is the
    mean over all of the run's images, which exists only at the end. Stored rows stay raw.
    """
    if spec.method != "likelihood":
        return predictions
    from vlmclf.methods.likelihood.method import finalize_predictions as finalize_likelihood

    return finalize_likelihood(predictions, class_names, spec)


def needs_finalizing(spec: RunSpec) -> bool:
    """Whether the summary must see the whole run first (see ``finalize_predictions``)."""
    if spec.method != "likelihood":
        return False
    from vlmclf.methods.likelihood.method import needs_finalizing as likelihood_needs

    return likelihood_needs(spec)


def finalize_prediction_chunks(
    spec: RunSpec,
    read_chunks: Callable[[], Iterable[list[Prediction]]],
    class_names: list[str],
) -> Iterator[list[Prediction]]:
    """``finalize_predictions`` for a run read in chunks (``read_chunks`` starts a fresh pass
    over the stored run each call; a calibrated run is read twice)."""
    if not needs_finalizing(spec):
        return iter(read_chunks())
    from vlmclf.methods.likelihood.method import finalize_prediction_chunks as finalize

    return finalize(read_chunks, class_names, spec)
