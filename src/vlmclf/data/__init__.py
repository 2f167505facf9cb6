"""Datasets, class-name lists and K-way choice sampling (imports nothing else of ours)."""

from vlmclf.data.choices import sample_choices
from vlmclf.data.classnames import (
    CLASS_LISTS,
    canonical_indices,
    load_class_names,
    unique_class_indices,
)
from vlmclf.data.images import open_image
from vlmclf.data.manifest import write_manifest
from vlmclf.data.readers import LAYOUTS, load_dataset
from vlmclf.data.types import BadExampleError, Dataset, Example

__all__ = [
    "CLASS_LISTS",
    "LAYOUTS",
    "BadExampleError",
    "Dataset",
    "Example",
    "canonical_indices",
    "load_class_names",
    "load_dataset",
    "open_image",
    "sample_choices",
    "unique_class_indices",
    "write_manifest",
]
