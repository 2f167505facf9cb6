"""Sources at scale, named by a prefix: ``wds:PATH_OR_GLOB`` and ``hf-dataset:PATH[:split]``.

They differ from the ``NAME[:split]`` layouts in carrying a path, which may itself hold ``:``
(brace or glob patterns, ``::`` lists), so their specs are split here and nowhere else. Their
readers need optional packages (``vlmclf.data.optional``), imported only when such a spec is
read.
"""

from __future__ import annotations

from vlmclf.data.hf_source import read_hf_dataset
from vlmclf.data.optional import HF_PREFIX, WDS_PREFIX
from vlmclf.data.types import Dataset
from vlmclf.data.webdataset_source import read_wds

SOURCE_PREFIXES = (WDS_PREFIX, HF_PREFIX)


def is_source_spec(spec: str) -> bool:
    return spec.startswith(SOURCE_PREFIXES)


def split_source_spec(spec: str) -> tuple[str, str | None]:
    """``hf-dataset:PATH:split`` -> ``('hf-dataset:PATH', 'split')``; a ``wds:`` spec keeps its
    whole path (patterns may hold ``:``): its split is ``--split``."""
    if spec.startswith(WDS_PREFIX):
        return spec, None
    path, colon, split = spec[len(HF_PREFIX) :].rpartition(":")
    if not colon or not split or "/" in split or "\\" in split:
        return spec, None
    return HF_PREFIX + path, split


def read_source(spec: str, split: str | None, classes: str | None) -> Dataset:
    """The dataset a ``wds:`` or ``hf-dataset:`` spec (without its ``:split``) names."""
    if spec.startswith(WDS_PREFIX):
        return read_wds(spec[len(WDS_PREFIX) :], split, classes)
    return read_hf_dataset(spec[len(HF_PREFIX) :], split, classes)

