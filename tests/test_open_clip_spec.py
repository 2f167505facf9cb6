"""open_clip: specs (hf-hub:, local-dir:, ?tokenizer=DIR, mean/std/resize) and one-line errors,
tested without the real open_clip: a stand-in package on sys.path records what it is asked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vlmclf.cli import app
from vlmclf.models import load_model
from vlmclf.models.open_clip_encoder import (
    OpenClipSource,
    OpenClipUnavailable,
    parse_open_clip_spec,
)

FAKE_OPEN_CLIP = """
import json, os, torch

CALLS = []

class _Model(torch.nn.Module):
    context_length = 64
    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.proj = torch.nn.Linear(3, 4)
    def encode_image(self, pixels):
        return self.proj(pixels.mean(dim=(2, 3)))
    def encode_text(self, tokens):
        return self.proj(tokens.float()[:, :3])

def create_model_and_transforms(model_name, **kwargs):
    CALLS.append(("create", model_name, kwargs))
    if model_name == "No-Such-Arch":
        raise RuntimeError("Model config for No-Such-Arch not found.\\nsecond line")
    preprocess = lambda image: torch.ones(3, 4, 4)
    return _Model(), None, preprocess

def get_tokenizer(model_name):
    CALLS.append(("get_tokenizer", model_name))
    if "SigLIP" in model_name:
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")
    return lambda texts: torch.ones(len(texts), 5, dtype=torch.long)

def get_model_config(model_name):
    return {"text_cfg": {"tokenizer_kwargs": {"clean": "canonicalize"}}}

class tokenizer:
    class HFTokenizer:
        def __init__(self, name, context_length, **kwargs):
            CALLS.append(("HFTokenizer", name, context_length, kwargs))
        def __call__(self, texts):
            return torch.ones(len(texts), 5, dtype=torch.long)
"""


@pytest.fixture
def fake_open_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A stand-in ``open_clip`` importable for this test only."""
    package = tmp_path / "site" / "open_clip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_OPEN_CLIP)
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield lambda: sys.modules["open_clip"].CALLS
    sys.modules.pop("open_clip", None)


@pytest.fixture
def broken_open_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An ``open_clip`` whose import dies the way a mismatched torchvision does."""
    package = tmp_path / "broken" / "open_clip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist\\nmore detail')\n"
    )
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "broken"))
    yield
    sys.modules.pop("open_clip", None)


def test_arch_and_tag_or_weights_file(tmp_path: Path):
    assert parse_open_clip_spec("ViT-B-32:openai") == OpenClipSource("ViT-B-32", "openai")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    assert parse_open_clip_spec(f"EVA02-B-16:{weights}").pretrained == str(weights)
    with pytest.raises(ValueError, match=r"weights file .*missing\.pt does not exist"):
        parse_open_clip_spec(f"ViT-B-32:{tmp_path}/missing.pt")
    with pytest.raises(ValueError, match="open_clip:<arch>:<pretrained-or-path>"):
        parse_open_clip_spec("ViT-B-32")


def test_hub_and_local_dir_sources_are_passed_whole(tmp_path: Path):
    hub = parse_open_clip_spec("hf-hub:timm/ViT-B-16-SigLIP")
    assert hub == OpenClipSource("hf-hub:timm/ViT-B-16-SigLIP", None)
    local = parse_open_clip_spec(f"local-dir:{tmp_path}")
    assert local.model_name == f"local-dir:{tmp_path}" and local.pretrained is None
    with pytest.raises(ValueError, match="local-dir folder .*nowhere does not exist"):
        parse_open_clip_spec(f"local-dir:{tmp_path}/nowhere")
    with pytest.raises(ValueError, match="hf-hub: needs an id like org/name"):
        parse_open_clip_spec("hf-hub:justaname")
    with pytest.raises(ValueError, match="hf-hub: needs a hub id"):
        parse_open_clip_spec("hf-hub:")


def test_options_tokenizer_mean_std_resize(tmp_path: Path):
    source = parse_open_clip_spec(
        f"hf-hub:timm/ViT-B-16-SigLIP?tokenizer={tmp_path}&mean=0.5,0.5,0.5&std=0.5,0.25,1"
        "&resize=squash"
    )
    assert source.tokenizer_dir == str(tmp_path)
    assert source.create_kwargs() == {
        "pretrained": None,
        "image_mean": (0.5, 0.5, 0.5),
        "image_std": (0.5, 0.25, 1.0),
        "image_resize_mode": "squash",
    }
    assert parse_open_clip_spec("ViT-B-32:openai?").create_kwargs() == {"pretrained": "openai"}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("colour=red", "unknown option 'colour'; known: tokenizer, mean, std, resize"),
        ("mean=0.5,0.5", r"mean= takes three comma-separated numbers \(r,g,b\), got '0.5,0.5'"),
        ("std=1,0,1", "std= values must be positive"),
        ("resize=crop", "resize= must be one of shortest, longest, squash, got 'crop'"),
        ("tokenizer=/no/such/dir", "tokenizer folder /no/such/dir does not exist"),
        ("mean", "option 'mean' must be key=value"),
    ],
)
def test_bad_options_are_one_line_errors(query: str, message: str):
    with pytest.raises(ValueError, match=message) as caught:
        parse_open_clip_spec(f"ViT-B-32:openai?{query}")
    assert "\n" not in str(caught.value) and "open_clip:ViT-B-32:openai?" in str(caught.value)


def test_loading_passes_the_parsed_source_to_open_clip(fake_open_clip, tmp_path: Path):
    spec = f"open_clip:hf-hub:timm/ViT-B-16-SigLIP?tokenizer={tmp_path}&resize=longest"
    encoder = load_model(spec)
    calls = fake_open_clip()
    kind, model_name, kwargs = calls[0]
    assert (kind, model_name) == ("create", "hf-hub:timm/ViT-B-16-SigLIP")
    assert kwargs["pretrained"] is None and kwargs["image_resize_mode"] == "longest"
    assert kwargs["precision"] == "fp32" and "image_mean" not in kwargs
    assert calls[1] == ("HFTokenizer", str(tmp_path), 64, {"clean": "canonicalize"})
    assert encoder.name == spec
    embeddings = encoder.encode_texts(["a photo of a dog.", "a cat"])
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))


def test_open_clip_failures_are_one_line(fake_open_clip):
    with pytest.raises(ValueError, match="cannot load 'open_clip:No-Such-Arch:openai'") as caught:
        load_model("open_clip:No-Such-Arch:openai")
    assert "\n" not in str(caught.value) and "not found." in str(caught.value)
    with pytest.raises(ValueError, match=r"tokenizer .*\(offline\? give a local one") as caught:
        load_model("open_clip:ViT-B-16-SigLIP:webli")
    assert "\n" not in str(caught.value)


def test_an_import_that_crashes_is_one_line(broken_open_clip):
    with pytest.raises(OpenClipUnavailable, match="fails to import") as caught:
        load_model("open_clip:ViT-B-32:openai")
    assert "torchvision::nms" in str(caught.value) and "\n" not in str(caught.value)


def test_eval_prints_the_broken_import_without_a_traceback(broken_open_clip, tmp_path: Path):
    manifest = tmp_path / "m.jsonl"
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    manifest.write_text(json.dumps({"image": str(image), "label": "cat"}) + "\n")
    result = CliRunner().invoke(
        app,
        ["eval", "--model", "open_clip:ViT-B-32:openai", "--dataset", str(manifest), "--method",
         "clip", "--store", str(tmp_path / "r.sqlite"), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "fails to import" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
