"""The paper's prompts and CLIP templates, as data.

The wordings are the four of the paper's code (``main_results/analyze_prompt.sh``), in its order
base, alt3, alt1, alt2 (``alt1`` and ``alt2`` kept their meaning when ``alt3`` was added).
``thesis`` is the companion thesis's closed-world question, which carries the label list itself
(``{labels}``). The closed-world suffix and the CoT cue are the paper's strings; where the cue
goes (user turn, or the assistant prefix of the paper's templates) is the protocol's business
(``vlmclf.paper.protocols``). The token budgets here are vlmclf's (clean) defaults, not the paper's
64 / 512.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from vlmclf.methods.letters import lettered_options

QUESTIONS: dict[str, str] = {
    "base": "What type of object is in this photo?",
    "alt1": "Identify the object in this image.",
    "alt2": "What is the main object depicted in this photograph?",
    "alt3": "Can you name the specific item pictured here?",
    "thesis": (
        "This image represents an object that belongs to one of the following classes: "
        "{labels}. What is the most probable class that the object in the image belongs to, "
        "given the provided classes?"
    ),
}
PAPER_WORDINGS = ("base", "alt3", "alt1", "alt2")
"""The four wordings in the order of the paper's code (prompt1 ... prompt4)."""
COT_SUFFIX = "Let's think step by step."
DEFAULT_MAX_NEW_TOKENS = 32
COT_MAX_NEW_TOKENS = 256

PAPER_TEMPLATES = ["a photo of a {}."]
"""Named ``paper`` for existing run ids: CLIP's single template. The paper's code uses
``PAPER_CODE_TEMPLATES`` (capital A, no period)."""
PAPER_CODE_TEMPLATES = ["A photo of a {}"]
# CLIP's 80 prompt templates for ImageNet (Radford et al., 2021, the notebook "Prompt_Engineering").
IMAGENET80_TEMPLATES = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
]


def open_question(prompt: str) -> str:
    """The question for a named wording (base, alt1, alt2, alt3, thesis) or the free text given."""
    return QUESTIONS.get(prompt, prompt)


def closed_world_suffix(choice_names: list[str]) -> str:
    """The paper's closed-world instruction listing the label set."""
    return f'Choose one from "{", ".join(choice_names)}".'


def build_question(
    prompt: str, choice_names: list[str] | None = None, cot: bool = False, lettered: bool = False
) -> str:
    """The full user text: the question, the label set when closed-world, then CoT if asked.

    A wording holding ``{labels}`` (the thesis's) gets the names joined by ", " in place of
    the closed-world suffix. ``lettered`` (``--format mc``) lists the names as "A. name" lines
    with LLaVA's multiple-choice instruction instead.
    """
    question = open_question(prompt)
    if lettered and choice_names is not None:
        parts = [question + "\n" + lettered_options(choice_names)]
    elif "{labels}" in question:
        if choice_names is None:
            raise ValueError(
                f"--prompt {prompt}: this wording lists the labels; use --setting closed"
            )
        parts = [question.replace("{labels}", ", ".join(choice_names))]
    else:
        parts = [question]
        if choice_names is not None:
            parts.append(closed_world_suffix(choice_names))
    if cot:
        parts.append(COT_SUFFIX)
    return " ".join(parts)


def _check_template(path: Path, index: int, template: object) -> None:
    """A template is a string with exactly one ``{}`` (literal braces written ``{{ }}``)."""
    where = f"--templates {path}: template {index}"
    if not isinstance(template, str):
        raise ValueError(f"{where} must be a string, got {template!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise ValueError(
            f"{where} {template!r}: {err} (write a literal brace as {{{{ or }}}})"
        ) from err
    if fields != [""]:
        raise ValueError(
            f"{where} {template!r} must contain exactly one '{{}}' for the class name, "
            f"found {['{' + f + '}' for f in fields]}"
        )


def load_templates(name: str) -> list[str]:
    """CLIP templates by name (paper, paper_code, imagenet80), a JSON list of '{}' strings, or
    CLIP_benchmark's ``zeroshot_classification_templates.txt`` (one a line, ``{c}``: the name)."""
    if name == "paper":
        return list(PAPER_TEMPLATES)
    if name == "paper_code":
        return list(PAPER_CODE_TEMPLATES)
    if name == "imagenet80":
        return list(IMAGENET80_TEMPLATES)
    path = Path(name)
    if not path.is_file():
        raise ValueError(
            f"--templates: expected 'paper', 'imagenet80', a JSON file or a .txt file, got {name!r}"
        )
    if path.suffix.lower() == ".txt":
        return _clip_benchmark_templates(path)
    try:
        templates = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"--templates {path}: not UTF-8 text ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--templates {path} line {err.lineno} column {err.colno}: invalid JSON ({err.msg})"
        ) from err
    if not isinstance(templates, list) or not templates:
        raise ValueError(f"--templates {path}: expected a non-empty JSON list of template strings")
    for i, template in enumerate(templates):
        _check_template(path, i, template)
    return templates


def _clip_benchmark_templates(path: Path) -> list[str]:
    """A text file of templates, one a line, naming the class ``{c}`` as CLIP_benchmark does."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"--templates {path}: not UTF-8 text ({err.reason})") from err
    templates = [line.strip().replace("{c}", "{}") for line in lines if line.strip()]
    if not templates:
        raise ValueError(f"--templates {path}: no templates (one a line, {{c}} for the class)")
    for i, template in enumerate(templates):
        _check_template(path, i, template)
    return templates
