"""Decoding uploaded images without letting one upload take the machine's memory.

The pixel count is read from the image header and checked before any pixel is decoded (a
12000x12000 single-colour PNG is a few kilobytes on the wire and 430 MB decoded), and at most
``slots`` images are decoded at once, whatever the number of connections.
"""

from __future__ import annotations

import io
import threading
import warnings

from PIL import Image

from vlmclf.serve.protocol import RequestError


class ImageDecoder:
    """Bounded, checked decoding of uploaded image bytes to RGB."""

    def __init__(self, max_pixels: int, slots: int):
        if max_pixels < 1 or slots < 1:
            raise ValueError(f"max_pixels and slots must be positive, got {max_pixels}, {slots}")
        self.max_pixels = max_pixels
        self._slots = threading.BoundedSemaphore(slots)

    def decode(self, data: bytes) -> Image.Image:
        """The RGB image in ``data``, or RequestError (400 unreadable, 413 too many pixels)."""
        with self._slots, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(io.BytesIO(data))
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
                raise self._too_large(str(err)) from err
            except Exception as err:  # noqa: BLE001 - any unreadable upload is the client's
                raise RequestError(
                    400, f"the image could not be decoded: {err}", "invalid_image"
                ) from err
            width, height = image.size
            if width * height > self.max_pixels:
                raise self._too_large(f"{width}x{height} = {width * height} pixels")
            try:
                image.load()
                return image.convert("RGB")
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
                raise self._too_large(str(err)) from err
            except Exception as err:  # noqa: BLE001 - truncated or corrupt data
                raise RequestError(
                    400, f"the image could not be decoded: {err}", "invalid_image"
                ) from err

    def _too_large(self, detail: str) -> RequestError:
        return RequestError(
            413,
            f"the image is too large ({detail}); this server decodes at "
            f"most {self.max_pixels} pixels (--max-pixels)",
            "image_too_large",
        )
