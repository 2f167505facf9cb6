"""Open one image file safely: fully decoded RGB, or a BadExampleError that says why not.

A benchmark run must survive a bad file (missing, empty, truncated, not an image, a
decompression bomb) without stopping, so every failure becomes ``BadExampleError`` with the
path and the reason; the runner records it as a failed prediction and carries on.

Decoding gives what a photo viewer shows: EXIF orientation is applied (a phone photo stored
sideways is turned upright) and 16-/32-bit images are scaled to 8 bits by their range instead of
being clipped to white. ``DecodeSettings`` holds these choices; ``image_decode_identity`` returns
them as a dict for a run's identity, since changing any of them changes the pixels a model sees.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlmclf.data.types import BadExampleError

DEFAULT_MAX_PIXELS = 89_478_485
"""Pixel cap (PIL's own default): a larger image is treated as a decompression bomb."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})

HIGH_BIT_DEPTH_RULE = "scale-by-range-v1"
"""How 16-/32-bit pixels become 8-bit (see ``_scale_to_8bit``); renamed if the rule changes."""


@dataclass(frozen=True)
class DecodeSettings:
    """Choices that change the decoded pixels. The paper's code ignored EXIF orientation (PIL's
    default), so a paper protocol may pass ``exif_orientation=False``."""

    exif_orientation: bool = True
    high_bit_depth: str = HIGH_BIT_DEPTH_RULE
    max_pixels: int = DEFAULT_MAX_PIXELS


DEFAULT_DECODE = DecodeSettings()


def image_decode_identity(settings: DecodeSettings = DEFAULT_DECODE) -> dict[str, object]:
    """The decode settings as plain JSON values, to be hashed into a run's identity."""
    return asdict(settings)


def is_image_name(path: Path) -> bool:
    """True for file names with an image extension (case-insensitive); decoding is not tried."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def open_image(
    path: str | Path, max_pixels: int | None = None, settings: DecodeSettings = DEFAULT_DECODE
) -> Image.Image:
    """Decode ``path`` completely and return it as an upright 8-bit RGB image.

    ``max_pixels`` (default ``settings.max_pixels``) caps width x height; PIL's own
    DecompressionBombWarning / DecompressionBombError also count as failures. Truncated files
    are rejected (``img.load()`` forces the full decode; LOAD_TRUNCATED_IMAGES is left alone).
    The file is closed before this returns, whatever happens.
    """
    file = Path(path)
    cap = settings.max_pixels if max_pixels is None else max_pixels
    _check_file_exists(file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                _check_pixel_cap(file, img.size, cap)
                img.load()
                upright = ImageOps.exif_transpose(img) if settings.exif_orientation else img
                return _to_rgb(upright)
    except BadExampleError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise BadExampleError(f"{file}: decompression bomb ({err})") from err
    except UnidentifiedImageError as err:
        raise BadExampleError(f"{file}: not an image (PIL cannot identify its format)") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadExampleError(f"{file}: truncated or corrupt image data ({err})") from err


def _check_file_exists(file: Path) -> None:
    if not file.exists():
        raise BadExampleError(f"{file}: missing file")
    if not file.is_file():
        raise BadExampleError(f"{file}: not a regular file")
    if file.stat().st_size == 0:
        raise BadExampleError(f"{file}: zero-byte file")


def _check_pixel_cap(file: Path, size: tuple[int, int], cap: int) -> None:
    width, height = size
    if width * height > cap:
        raise BadExampleError(
            f"{file}: decompression bomb ({width}x{height} = {width * height} pixels "
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
