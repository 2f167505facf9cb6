"""Images as a user expects them: EXIF orientation applied, 16-/32-bit scaled, not clipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmclf.data.images import DecodeSettings, image_decode_identity, open_image


def slow_scale(value: float, low: float, high: float) -> int:
    """Reference: one pixel mapped linearly from [low, high] to 0..255, rounded half to even."""
    return min(255, max(0, round((value - low) / (high - low) * 255)))


def red_channel(path: Path, **kwargs: object) -> np.ndarray:
    return np.asarray(open_image(path, **kwargs))[..., 0]


def test_16bit_png_is_scaled_by_its_range_not_clipped(tmp_path: Path) -> None:
    values = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    red = red_channel(tmp_path / "deep.png")
    expected = [[slow_scale(int(v), 0, 65535) for v in row] for row in values]
    assert red.tolist() == expected
    assert (red == 255).mean() == 0.0  # PIL's convert("RGB") made 98% of these pixels white


def test_32bit_float_tiff_in_unit_range(tmp_path: Path) -> None:
    values = (np.arange(64).reshape(8, 8) / 63).astype(np.float32)
    Image.fromarray(values).save(tmp_path / "float.tif")
    red = red_channel(tmp_path / "float.tif")
    assert red.tolist() == [[slow_scale(float(v), 0.0, 1.0) for v in row] for row in values]


def test_32bit_float_tiff_outside_unit_range_is_stretched(tmp_path: Path) -> None:
    values = (np.arange(16).reshape(4, 4) * 10.0 - 30.0).astype(np.float32)
    values[0, 0] = np.nan
    Image.fromarray(values).save(tmp_path / "wide.tif")
    red = red_channel(tmp_path / "wide.tif")
    low, high = -20.0, 120.0  # NaN is ignored when finding the range and becomes the minimum
    expected = [[slow_scale(float(v), low, high) if np.isfinite(v) else 0 for v in row]
                for row in values]  # fmt: skip
    assert red.tolist() == expected


@pytest.mark.parametrize(
    ("scale", "low", "high"), [(1000, 0, 65535), (30_000_000, 0, 2147483647), (-1000, -63000, 0)]
)
def test_32bit_integer_tiff(tmp_path: Path, scale: int, low: int, high: int) -> None:
    values = (np.arange(64).reshape(8, 8) * scale).astype(np.int32)
    Image.fromarray(values).save(tmp_path / "int.tif")
    assert Image.open(tmp_path / "int.tif").mode == "I"
    red = red_channel(tmp_path / "int.tif")
    assert red.tolist() == [[slow_scale(int(v), low, high) for v in row] for row in values]


def exif_rotated_jpeg(path: Path) -> None:
    """A 40x20 JPEG, left half black, right half white, tagged 'rotate 90° clockwise' (6)."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied_by_default(tmp_path: Path) -> None:
    exif_rotated_jpeg(tmp_path / "phone.jpg")
    upright = open_image(tmp_path / "phone.jpg")
    assert upright.size == (20, 40)  # turned 90°: the viewer shows a portrait image
    pixels = np.asarray(upright).mean(axis=2)
    assert pixels[:15].mean() < 30 and pixels[25:].mean() > 225  # black top, white bottom


def test_exif_orientation_can_be_turned_off(tmp_path: Path) -> None:
    exif_rotated_jpeg(tmp_path / "phone.jpg")
    stored = open_image(tmp_path / "phone.jpg", settings=DecodeSettings(exif_orientation=False))
    assert stored.size == (40, 20)


def test_decode_identity_names_every_setting() -> None:
    default = image_decode_identity()
    assert default["exif_orientation"] is True
    assert set(default) == {
        "exif_orientation", "high_bit_depth", "max_pixels", "max_decoded_pixels"
    }
    assert image_decode_identity(DecodeSettings(exif_orientation=False)) != default


def test_image_folder_lists_tiff_files(tmp_path: Path) -> None:
    from vlmclf.data import load_dataset

    (tmp_path / "cat").mkdir()
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "cat" / "a.tif")
    dataset = load_dataset("imagefolder", data_root=str(tmp_path))
    assert [e.id for e in dataset.examples] == ["cat/a.tif"]
    assert dataset.examples[0].load().getpixel((0, 0)) == (128, 128, 128)
