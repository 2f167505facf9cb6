"""Open one image file safely: fully decoded RGB, or a BadExampleError that says why not.

A benchmark run must survive a bad file (missing, empty, truncated, not an image, a
decompression bomb) without stopping, so every failure becomes ``BadExampleError`` with the
path and the reason; the runner records it as a failed prediction and carries on.

Decoding gives what a photo viewer shows: EXIF orientation is applied (a phone photo stored
sideways is turned upright) and 16-/32-bit images are scaled to 8 bits by their range instead of
being clipped to white. ``DecodeSettings`` holds these choices; ``image_decode_identity`` returns
them as a dict for a run's identity, since changing any of them changes the pixels a model sees.

Memory is bounded by decoding no more than a model can use: an image with more pixels than
``max_decoded_pixels`` (default 4096 x 4096, more than any supported processor takes at its
default settings) is decoded reduced to at most that many, keeping its aspect ratio. JPEGs are
reduced inside the decoder (Pillow's draft mode, a power-of-two DCT scaling) and the rest after a
full-size decode; a Lanczos resize gives the final size. Decodes of more than 4096 x 4096 pixels
(after draft mode, whatever the bound) run one at a time per process, so that a few worker
threads cannot multiply their peak; smaller images decode in parallel.
Images at or under the bound take exactly the old path, so their pixels do not change.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from vlmclf.data.types import BadExampleError

DEFAULT_MAX_PIXELS = 89_478_485
"""Pixel cap (PIL's own default): a larger image is treated as a decompression bomb."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

DEFAULT_MAX_DECODED_PIXELS = 4096 * 4096
"""Decode bound: Qwen3-VL's default pixel budget (the largest of the supported processors;
Qwen2-VL's is 3584 x 3584, LLaVA-OneVision's anyres grid 2304 on a side, CLIP's 224-384)."""

HIGH_BIT_DEPTH_RULE = "scale-by-range-v1"
"""How 16-/32-bit pixels become 8-bit (see ``_scale_to_8bit``); renamed if the rule changes."""


@dataclass(frozen=True)
class DecodeSettings:
    """Choices that change the decoded pixels. The paper's code ignored EXIF orientation (PIL's
    default), so a paper protocol may pass ``exif_orientation=False``."""

    exif_orientation: bool = True
    high_bit_depth: str = HIGH_BIT_DEPTH_RULE
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decoded_pixels: int | None = DEFAULT_MAX_DECODED_PIXELS
    """Larger images are decoded reduced to at most this many pixels; None decodes at full size."""


DEFAULT_DECODE = DecodeSettings()
_in_effect = DEFAULT_DECODE
BIG_DECODE_PIXELS = DEFAULT_MAX_DECODED_PIXELS
"""Decodes of more pixels than this (after draft mode) run one at a time, whatever the bound."""
_BIG_DECODE = threading.Lock()


def decode_settings_in_effect() -> DecodeSettings:
    """The settings ``open_image`` uses when none are passed (``DEFAULT_DECODE`` unless a
    command chose others with ``decoding_with``)."""
    return _in_effect


@contextmanager
def decoding_with(settings: DecodeSettings) -> Iterator[DecodeSettings]:
    """Make ``settings`` the process's decode settings for the duration, then restore.

    Process-wide on purpose: every loader (in every worker thread) and the run identity read the
    same value, so what is decoded and what is hashed cannot disagree.
    """
    global _in_effect
    previous, _in_effect = _in_effect, settings
    try:
        yield settings
    finally:
        _in_effect = previous


def decode_settings_for(max_decoded_pixels: int | None) -> DecodeSettings:
    """The default settings with another decode bound: None keeps the default, 0 means none
    (full-size decoding, the behaviour before the bound, with the run ids of that time)."""
    if max_decoded_pixels is None:
        return DEFAULT_DECODE
    return replace(DEFAULT_DECODE, max_decoded_pixels=max_decoded_pixels or None)


def image_decode_identity(settings: DecodeSettings | None = None) -> dict[str, object]:
    """The decode settings (default: those in effect) as plain JSON values for a run's identity."""
    return asdict(decode_settings_in_effect() if settings is None else settings)


def is_image_name(path: Path) -> bool:
    """True for file names with an image extension (case-insensitive); decoding is not tried."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def open_image(
    path: str | Path, max_pixels: int | None = None, settings: DecodeSettings | None = None
) -> Image.Image:
    """Decode ``path`` completely and return it as an upright 8-bit RGB image.

    ``max_pixels`` (default ``settings.max_pixels``) caps width x height; PIL's own
    DecompressionBombWarning / DecompressionBombError also count as failures. Truncated files
    are rejected (``img.load()`` forces the full decode; LOAD_TRUNCATED_IMAGES is left alone).
    Images over ``settings.max_decoded_pixels`` come back reduced (see the module docstring).
    The file is closed before this returns, whatever happens.
    """
    file = Path(path)
    _check_file_exists(file)
    return _decode(file, str(file), max_pixels, settings)


def open_image_bytes(
    data: bytes, name: str, max_pixels: int | None = None, settings: DecodeSettings | None = None
) -> Image.Image:
    """``open_image`` for an encoded image held in memory (a tar member, an Arrow cell), with
    the same rules and errors; ``name`` says where the bytes came from in those errors."""
    if not data:
        raise BadExampleError(f"{name}: zero-byte image")
    return _decode(io.BytesIO(data), name, max_pixels, settings)


def _decode(
    source: Path | BinaryIO, name: str, max_pixels: int | None, settings: DecodeSettings | None
) -> Image.Image:
    settings = decode_settings_in_effect() if settings is None else settings
    cap = settings.max_pixels if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                _check_pixel_cap(name, img.size, cap)
                target = reduced_size(img.size, settings.max_decoded_pixels)
                if target is not None:
                    return _decode_reduced(img, target, settings)
                with one_at_a_time_if_big(img.size):
                    img.load()
                    upright = ImageOps.exif_transpose(img) if settings.exif_orientation else img
                    return _to_rgb(upright)
    except BadExampleError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise BadExampleError(f"{name}: decompression bomb ({err})") from err
    except UnidentifiedImageError as err:
        raise BadExampleError(f"{name}: not an image (PIL cannot identify its format)") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadExampleError(f"{name}: truncated or corrupt image data ({err})") from err


def reduced_size(size: tuple[int, int], max_decoded_pixels: int | None) -> tuple[int, int] | None:
    """The size an image of ``size`` is decoded to, or None when it is decoded as it is: the
    largest size with the same aspect ratio and at most ``max_decoded_pixels`` pixels."""
    width, height = size
    if max_decoded_pixels is None or width * height <= max_decoded_pixels:
        return None
    scale = math.sqrt(max_decoded_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def one_at_a_time_if_big(size: tuple[int, int]) -> AbstractContextManager[object]:
    """A process-wide lock for decodes over ``BIG_DECODE_PIXELS``, so worker threads cannot
    multiply their peak (a 9000 x 9000 image takes about 1 GB while it becomes RGB at full size,
    220 MB through draft mode); smaller decodes run in parallel."""
    return _BIG_DECODE if size[0] * size[1] > BIG_DECODE_PIXELS else nullcontext()


def _decode_reduced(
    img: Image.Image, target: tuple[int, int], settings: DecodeSettings
) -> Image.Image:
    """``img`` decoded at ``target`` size (in its stored orientation), then made upright.

    A JPEG of at least twice the target on each side is decoded at 1/2, 1/4 or 1/8 scale (the
    smallest that stays at or above the target); anything still larger is resized with Lanczos.
    """
    img.draft(img.mode, target)  # a no-op for formats other than JPEG
    with one_at_a_time_if_big(img.size):
        small = _resized_rgb(img, target)
    if not settings.exif_orientation:
        return small
    # read after loading (PNG keeps EXIF after the pixels), like ImageOps.exif_transpose
    method = _ORIENTATION_TRANSPOSE.get(img.getexif().get(ExifTags.Base.Orientation, 1))
    return small if method is None else small.transpose(method)


# what ImageOps.exif_transpose does for each EXIF orientation, applied after the resize
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _resized_rgb(img: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Load ``img`` (maybe drafted), convert it by the usual rules, resize it to ``target``."""
    img.load()
    rgb = _to_rgb(img) if img.mode != "RGB" else img
    if rgb.size != target:
        return rgb.resize(target, Image.Resampling.LANCZOS)
    return rgb.copy() if rgb is img else rgb  # never hand out the file-backed image


def _check_file_exists(file: Path) -> None:
    if not file.exists():
        raise BadExampleError(f"{file}: missing file")
    if not file.is_file():
        raise BadExampleError(f"{file}: not a regular file")
    if file.stat().st_size == 0:
        raise BadExampleError(f"{file}: zero-byte file")


def _check_pixel_cap(name: str, size: tuple[int, int], cap: int) -> None:
    width, height = size
    if width * height > cap:
        raise BadExampleError(
            f"{name}: decompression bomb ({width}x{height} = {width * height} pixels "
            f"exceeds the cap of {cap})"
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert to RGB; palette images with transparency go through RGBA as PIL recommends."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(_scale_to_8bit(img)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


_UNSIGNED_RANGES = (255, 65_535, 2_147_483_647)


def _scale_to_8bit(img: Image.Image) -> np.ndarray:
    """One high-bit-depth band (PIL modes I;16*, I, F) as uint8, scaled by its range.

    16-bit files use the full 16-bit range (PIL's own convert clips everything above 255 to
    white). Mode I does not say how many bits the file had, so non-negative data takes the
    smallest of the 8-bit, 16-bit and int32 ranges that holds it. Floats in [0, 1] are that
    range; other data (negative integers, floats outside [0, 1]) is stretched from its minimum
    to its maximum.
    NaN becomes 0 and infinities the ends of the finite range.
    """
    pixels = np.asarray(img).astype(np.float64)
    finite = pixels[np.isfinite(pixels)]
    low = float(finite.min()) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 0.0
    if img.mode.startswith("I;16"):
        low, high = 0.0, 65_535.0
    elif img.mode == "I" and low >= 0:
        low, high = 0.0, float(next(r for r in _UNSIGNED_RANGES if high <= r))
    elif img.mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    pixels = np.nan_to_num(pixels, nan=low, posinf=high, neginf=low)
    span = high - low
    if span <= 0:
        return np.zeros(pixels.shape, dtype=np.uint8)
    return np.clip(np.rint((pixels - low) / span * 255.0), 0, 255).astype(np.uint8)
