"""Open one image file safely: fully decoded RGB, or a BadExampleError that says why not.

A benchmark run must survive a bad file (missing, empty, truncated, not an image, a
decompression bomb) without stopping, so every failure becomes ``BadExampleError`` with the
path and the reason; the runner records it as a failed prediction and carries on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlmclf.data.types import BadExampleError

DEFAULT_MAX_PIXELS = 89_478_485
"""Pixel cap (PIL's own default): a larger image is treated as a decompression bomb."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})


def is_image_name(path: Path) -> bool:
    """True for file names with an image extension (case-insensitive); decoding is not tried."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def open_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Decode ``path`` completely and return it as an RGB image.

    ``max_pixels`` (default ``DEFAULT_MAX_PIXELS``) caps width x height; PIL's own
    DecompressionBombWarning / DecompressionBombError also count as failures. Truncated files
    are rejected (``img.load()`` forces the full decode; LOAD_TRUNCATED_IMAGES is left alone).
    The file is closed before this returns, whatever happens.
    """
    file = Path(path)
    cap = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    _check_file_exists(file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                _check_pixel_cap(file, img.size, cap)
                img.load()
                return _to_rgb(img)
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
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")
