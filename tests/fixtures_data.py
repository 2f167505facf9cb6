"""Builders of small, real on-disk dataset trees for the data-layer tests.

Every image is a real file written by PIL, every .mat file by scipy.io.savemat, every IDX file
by hand (header + bytes, optionally gzip-compressed), so the readers run their real code paths.
"""

from __future__ import annotations

import gzip
import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

CALTECH_FOLDERS = [
    "BACKGROUND_Google",
    "Faces",
    "Faces_easy",
    "Leopards",
    "Motorbikes",
    "accordion",
    "airplanes",
    "anchor",
    "ant",
    "barrel",
    "bass",
    "beaver",
    "binocular",
    "bonsai",
    "brain",
    "brontosaurus",
    "buddha",
    "butterfly",
    "camera",
    "cannon",
    "car_side",
    "ceiling_fan",
    "cellphone",
    "chair",
    "chandelier",
    "cougar_body",
    "cougar_face",
    "crab",
    "crayfish",
    "crocodile",
    "crocodile_head",
    "cup",
    "dalmatian",
    "dollar_bill",
    "dolphin",
    "dragonfly",
    "electric_guitar",
    "elephant",
    "emu",
    "euphonium",
    "ewer",
    "ferry",
    "flamingo",
    "flamingo_head",
    "garfield",
    "gerenuk",
    "gramophone",
    "grand_piano",
    "hawksbill",
    "headphone",
    "hedgehog",
    "helicopter",
    "ibis",
    "inline_skate",
    "joshua_tree",
    "kangaroo",
    "ketch",
    "lamp",
    "laptop",
    "llama",
    "lobster",
    "lotus",
    "mandolin",
    "mayfly",
    "menorah",
    "metronome",
    "minaret",
    "nautilus",
    "octopus",
    "okapi",
    "pagoda",
    "panda",
    "pigeon",
    "pizza",
    "platypus",
    "pyramid",
    "revolver",
    "rhino",
    "rooster",
    "saxophone",
    "schooner",
    "scissors",
    "scorpion",
    "sea_horse",
    "snoopy",
    "soccer_ball",
    "stapler",
    "starfish",
    "stegosaurus",
    "stop_sign",
    "strawberry",
    "sunflower",
    "tick",
    "trilobite",
    "umbrella",
    "watch",
    "water_lilly",
    "wheelchair",
    "wild_cat",
    "windsor_chair",
    "wrench",
    "yin_yang",
]
"""The 102 folders of the real 101_ObjectCategories (101 categories + background)."""


def save_image(path: Path, value: int = 0, size: tuple[int, int] = (8, 6)) -> Path:
    """A tiny solid-colour image; the format follows the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value % 256, (value * 7) % 256, (value * 13) % 256)).save(path)
    return path


def noisy_jpeg_bytes(size: int = 64, seed: int = 0) -> bytes:
    """A JPEG of random noise: large enough that cutting it in half truncates real scan data."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose IHDR claims ``width`` x ``height`` (a bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def make_wnids(count: int = 1000, seed: int = 0) -> list[str]:
    """``count`` distinct fake WordNet ids, deliberately not in sorted order."""
    numbers = random.Random(seed).sample(range(10**8), count)
    return [f"n{n:08d}" for n in numbers]


def make_imagenet_tree(root: Path, wnids: list[str], images: dict[str, int]) -> None:
    """``root/<wnid>/`` for every wnid, with ``images[wnid]`` JPEG files in some of them."""
    for wnid in wnids:
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(images.get(wnid, 0)):
            save_image(root / wnid / f"ILSVRC2012_val_{i:08d}.JPEG", i)


def make_flowers_tree(
    root: Path, labels: list[int], trnid: list[int], valid: list[int], tstid: list[int]
) -> None:
    """``jpg/image_XXXXX.jpg`` per label, ``imagelabels.mat`` and ``setid.mat`` (1-based)."""
    for number in range(1, len(labels) + 1):
        save_image(root / "jpg" / f"image_{number:05d}.jpg", number)
    scipy.io.savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    scipy.io.savemat(
        root / "setid.mat",
        {
            "trnid": np.array([trnid], dtype=np.uint16),
            "valid": np.array([valid], dtype=np.uint16),
            "tstid": np.array([tstid], dtype=np.uint16),
        },
    )


def cars_annotations(records: list[tuple[str, int]]) -> np.ndarray:
    """A 1xN MATLAB struct array shaped like the real devkit files."""
    fields = [
        (name, "O") for name in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    ]
    table = np.zeros((1, len(records)), dtype=fields)
    for i, (fname, label) in enumerate(records):
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 2, 30, 20)]
        table[0, i] = (*box, np.array([[label]], dtype=np.uint8), np.array([fname]))
    return table


def make_cars_tree(base: Path, train: list[tuple[str, int]], test: list[tuple[str, int]]) -> None:
    """torchvision's StanfordCars layout under ``base`` (usually ``root/stanford_cars``)."""
    for folder, records in (("cars_train", train), ("cars_test", test)):
        for i, (fname, _) in enumerate(records):
            save_image(base / folder / fname, i)
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        base / "devkit" / "cars_train_annos.mat", {"annotations": cars_annotations(train)}
    )
    scipy.io.savemat(
        base / "cars_test_annos_withlabels.mat", {"annotations": cars_annotations(test)}
    )


def make_caltech_tree(base: Path, folders: dict[str, int]) -> None:
    """``base/<folder>/image_XXXX.jpg`` with ``folders[name]`` images each."""
    for name, count in folders.items():
        (base / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, count + 1):
            save_image(base / name / f"image_{i:04d}.jpg", i)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000 08 <ndim>, big-endian dims, payload."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    data = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def make_fashion_tree(
    root: Path, n_train: int = 6, n_test: int = 5, compress: bool = True, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fake Fashion-MNIST IDX files; returns {split: (images, labels)} that were written."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, stem, count in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(root / f"{stem}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(root / f"{stem}-labels-idx1-ubyte{suffix}", labels, compress)
        written[split] = (images, labels)
    return written


COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 220)}


def write_noisy_colour_folder(root: Path, per_class: int, seed: int, noise: float) -> Path:
    """An image folder of 3 classes: solid colours with per-pixel Gaussian noise of std ``noise``
    (easy for a probe or a fine-tune to learn, hard enough not to be trivial)."""
    rng = np.random.RandomState(seed)
    for name, colour in COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.array(colour)[None, None, :] + rng.randn(32, 32, 3) * noise
            Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(folder / f"{i}.png")
    return root
