"""The catalog of dataset layouts and sources: what ``vlmclf data list`` prints, and the registry
of the benchmark layouts that ``load_dataset`` reads by name.

``BENCHMARK_LAYOUTS`` holds the fine-grained and robustness benchmarks (their readers live in
``layouts_finegrained``, ``layouts_robustness`` and ``cifar``); ``CATALOG`` adds a row for every
other layout and source, so the listing covers everything a ``--dataset`` can name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlmclf.data.cifar import cifar_reader
from vlmclf.data.layouts_finegrained import (
    AIRCRAFT_SPLITS,
    CUB_SPLITS,
    DOGS_SPLITS,
    FOOD_SPLITS,
    PETS_SPLITS,
    aircraft_reader,
    read_cub200,
    read_dtd,
    read_food101,
    read_oxford_pets,
    read_stanford_dogs,
    read_sun397,
)
from vlmclf.data.layouts_robustness import (
    V2_SPLITS,
    read_imagenet_a,
    read_imagenet_r,
    read_imagenet_sketch,
    read_imagenet_v2,
)
from vlmclf.data.types import Dataset

Reader = Callable[[str | Path, str], Dataset]


@dataclass(frozen=True)
class CatalogEntry:
    """One ``--dataset`` form. ``classes`` is None where the data decides it (folders, labels)."""

    name: str
    kind: str
    """``layout`` (``NAME[:split]``, read from ``--data-root``) or ``source`` (a path form)."""
    classes: int | None
    default_split: str | None
    splits: str
    expects: str
    read: Reader | None = None
    class_list: str | None = None
    """The shipped class list (``load_class_names``) its labels index."""


def _layout(
    name: str, classes: int, default: str, splits: tuple[str, ...] | str, expects: str,
    read: Reader | None = None, class_list: str | None = None,
) -> CatalogEntry:  # fmt: skip
    shown = splits if isinstance(splits, str) else ", ".join(splits)
    return CatalogEntry(
        name, "layout", classes, default, shown, expects, read, class_list or name
    )


BENCHMARK_LAYOUTS: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        _layout(
            "oxford_pets", 37, "test", PETS_SPLITS,
            "annotations/{trainval,test}.txt, images/<image>.jpg (ROOT or ROOT/oxford-iiit-pet)",
            read_oxford_pets,
        ),
        _layout(
            "cub200", 200, "test", CUB_SPLITS,
            "images.txt, train_test_split.txt, image_class_labels.txt, classes.txt, images/ "
            "(ROOT or ROOT/CUB_200_2011)",
            read_cub200,
        ),
        _layout(
            "fgvc_aircraft", 100, "test", AIRCRAFT_SPLITS,
            "images_variant_<split>.txt, images/<id>.jpg (ROOT, ROOT/data or "
            "ROOT/fgvc-aircraft-2013b/data); class level: variant",
            aircraft_reader("variant"),
        ),
        _layout(
            "fgvc_aircraft_family", 70, "test", AIRCRAFT_SPLITS,
            "images_family_<split>.txt, images/ (as fgvc_aircraft); class level: family",
            aircraft_reader("family"),
        ),
        _layout(
            "fgvc_aircraft_manufacturer", 30, "test", AIRCRAFT_SPLITS,
            "images_manufacturer_<split>.txt, images/ (as fgvc_aircraft); class level: "
            "manufacturer",
            aircraft_reader("manufacturer"),
        ),
        _layout(
            "food101", 101, "test", FOOD_SPLITS,
            "meta/classes.txt, meta/{train,test}.txt, images/<class>/<id>.jpg "
            "(ROOT or ROOT/food-101)",
            read_food101,
        ),
        _layout(
            "stanford_dogs", 120, "test", DOGS_SPLITS,
            "{train,test}_list.mat (ROOT or ROOT/lists), Images/<wnid>-<breed>/*.jpg",
            read_stanford_dogs,
        ),
        _layout(
            "dtd", 47, "test1", "train1..train10, val1..val10, test1..test10",
            "labels/<split>.txt, images/<texture>/*.jpg (ROOT or ROOT/dtd)",
            read_dtd,
        ),
        _layout(
            "sun397", 397, "test1", "train1..train10, test1..test10",
            "ClassName.txt, Training_NN.txt / Testing_NN.txt (ROOT, ROOT/SUN397 or "
            "ROOT/Partitions), SUN397/<letter>/<class>/*.jpg",
            read_sun397,
        ),
        _layout(
            "cifar10", 10, "test", ("train", "test"),
            "cifar-10-batches-py/{data_batch_1..5,test_batch} (python pickle batches)",
            cifar_reader("cifar10"),
        ),
        _layout(
            "cifar100", 100, "test", ("train", "test"),
            "cifar-100-python/{train,test} (python pickle batches; fine labels)",
            cifar_reader("cifar100"),
        ),
        _layout(
            "imagenet_v2", 1000, "matched-frequency", V2_SPLITS,
            "imagenetv2-<split>-format-val/<0..999>/*.jpeg (or ROOT/<0..999>)",
            read_imagenet_v2, "imagenet",
        ),
        _layout(
            "imagenet_r", 200, "test", ("test",),
            "imagenet-r/<wnid>/*.jpg (or ROOT/<wnid>); ImageNet names of its 200 synsets",
            read_imagenet_r,
        ),
        _layout(
            "imagenet_a", 200, "test", ("test",),
            "imagenet-a/<wnid>/*.jpg (or ROOT/<wnid>); ImageNet names of its 200 synsets",
            read_imagenet_a,
        ),
        _layout(
            "imagenet_sketch", 1000, "test", ("test",),
            "sketch/<wnid>/*.JPEG (ROOT, ROOT/imagenet-sketch or ROOT/<wnid>)",
            read_imagenet_sketch, "imagenet",
        ),
    )
}  # fmt: skip

EARLIER_LAYOUTS = (
    _layout(
        "imagenet", 1000, "val", "any split folder (val, train)",
        "<split>/<wnid>/* or ROOT/<wnid>/* (all 1000 folders, or LOC_synset_mapping.txt)",
    ),
    _layout(
        "flowers102", 102, "test", ("train", "val", "test", "paper_train", "paper_test"),
        "jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat (ROOT or ROOT/flowers-102)",
    ),
    _layout(
        "stanford_cars", 196, "test", ("train", "test"),
        "cars_{train,test}/, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat",
    ),
    _layout(
        "caltech101", 100, "test", ("test", "paper_train", "paper_test"),
        "101_ObjectCategories/<class>/*.jpg (ROOT or ROOT/caltech101)",
    ),
    _layout(
        "fashion_mnist", 10, "test", ("train", "test"),
        "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (default ROOT: Debian's "
        "/usr/share/datasets/fashion-mnist)",
    ),
)  # fmt: skip

SOURCES = (
    CatalogEntry(
        "imagefolder", "layout", None, "test", "none (every image gets the split)",
        "ROOT/<class>/<image>; classes = sorted folder names, or --classes",
    ),
    CatalogEntry(
        "PATH.jsonl[:split]", "source", None, "all lines", "the manifest's split field",
        'one {"image", "label", "split"} per line; classes = sorted labels, or --classes',
    ),
)

CATALOG: tuple[CatalogEntry, ...] = (*EARLIER_LAYOUTS, *BENCHMARK_LAYOUTS.values(), *SOURCES)


def catalog_rows() -> list[dict[str, object]]:
    """The catalog as plain dicts (``data list --json``)."""
    return [
        {
            "name": entry.name,
            "kind": entry.kind,
            "classes": entry.classes,
            "default_split": entry.default_split,
            "splits": entry.splits,
            "expects": entry.expects,
            "class_list": entry.class_list,
        }
        for entry in CATALOG
    ]


def format_catalog() -> str:
    """The catalog as an aligned table, each row followed by the files it expects."""
    width = max(len(entry.name) for entry in CATALOG)
    lines = [f"{'name':<{width}}  classes  {'default split':<17}  splits"]
    for entry in CATALOG:
        classes = str(entry.classes) if entry.classes is not None else "data"
        lines.append(
            f"{entry.name:<{width}}  {classes:>7}  {entry.default_split or '-':<17}  "
            f"{entry.splits}"
        )
        lines.append(f"{'':<{width}}    expects: {entry.expects}")
    return "\n".join(lines)
