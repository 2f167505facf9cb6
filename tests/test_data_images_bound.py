"""The decode bound: images over it come back reduced (JPEGs reduced inside the decoder), images
at or under it decode exactly as before, and the bound is part of the run identity."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin

from vlmclf.data import BadExampleError
from vlmclf.data.images import (
    DEFAULT_DECODE,
    DEFAULT_MAX_DECODED_PIXELS,
    DecodeSettings,
    decode_settings_for,
    decoding_with,
    open_image,
    reduced_size,
)
from vlmclf.run.identity import image_preprocessing_identity

ORIENTATION = 0x0112


def old_open_image(path: Path) -> Image.Image:
    """The decode path before the bound (8-bit files): full decode, EXIF upright, RGB."""
    with Image.open(path) as img:
        img.load()
        upright = ImageOps.exif_transpose(img)
        if upright.mode == "P" and "transparency" in upright.info:
            return upright.convert("RGBA").convert("RGB")
        return upright.convert("RGB")


def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like image: smooth gradients plus noise, so resampling differences show."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 / width, ys * 255 / height, (xs + ys) * 127 / (width + height)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def save_with_orientation(image: Image.Image, path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif.tobytes())


def small_images(folder: Path) -> list[Path]:
    """One file per decode path a dataset can take, all well under the default bound."""
    photo = textured(120, 80)
    photo.save(folder / "rgb.jpg", quality=90)
    photo.convert("L").save(folder / "gray.jpg")
    save_with_orientation(photo, folder / "rotated.jpg", 6)
    photo.save(folder / "rgb.png")
    photo.convert("RGBA").save(folder / "rgba.png")
    photo.convert("P").save(folder / "palette.gif")
    photo.save(folder / "rgb.webp", lossless=True)
    photo.save(folder / "rgb.tif")
    return sorted(folder.iterdir())


def test_images_under_the_bound_decode_exactly_as_before(tmp_path: Path) -> None:
    for path in small_images(tmp_path):
        new = open_image(path)
        assert new.size == old_open_image(path).size, path.name
        assert np.array_equal(np.asarray(new), np.asarray(old_open_image(path))), path.name
        unbounded = open_image(path, settings=decode_settings_for(0))
        assert np.array_equal(np.asarray(new), np.asarray(unbounded)), path.name


def test_high_bit_depth_under_the_bound_is_unchanged(tmp_path: Path) -> None:
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)).save(
        tmp_path / "deep.png"
    )
    bounded = open_image(tmp_path / "deep.png", settings=DecodeSettings(max_decoded_pixels=64 * 48))
    unbounded = open_image(tmp_path / "deep.png", settings=decode_settings_for(0))
    assert np.array_equal(np.asarray(bounded), np.asarray(unbounded))


def test_an_image_exactly_at_the_bound_is_not_touched(tmp_path: Path) -> None:
    textured(64, 48).save(tmp_path / "at.jpg")
    at = open_image(tmp_path / "at.jpg", settings=DecodeSettings(max_decoded_pixels=64 * 48))
    assert np.array_equal(np.asarray(at), np.asarray(old_open_image(tmp_path / "at.jpg")))
    over = open_image(tmp_path / "at.jpg", settings=DecodeSettings(max_decoded_pixels=64 * 48 - 1))
    assert over.size == (63, 47)


def test_reduced_size_keeps_aspect_and_stays_under_the_bound() -> None:
    for width, height in [(9000, 9000), (9000, 3000), (3000, 9000), (8001, 6007), (89_000, 1005)]:
        target = reduced_size((width, height), DEFAULT_MAX_DECODED_PIXELS)
        assert target is not None
        assert target[0] * target[1] <= DEFAULT_MAX_DECODED_PIXELS
        relative = abs(target[0] / target[1] / (width / height) - 1)
        assert relative < 1 / target[0] + 1 / target[1]
        # one more pixel on the long side would overshoot the aspect or the bound
        assert (target[0] + 1) * (target[1] + 1) > DEFAULT_MAX_DECODED_PIXELS
    assert reduced_size((4096, 4096), DEFAULT_MAX_DECODED_PIXELS) is None
    assert reduced_size((9000, 9000), None) is None


def test_default_bound_exceeds_every_processors_input() -> None:
    """Default-settings inputs of the supported families: a pixel budget (Qwen2-VL checkpoints:
    12,845,056) or a longest side (LLaVA-OneVision anyres: 2304; LLaVA-NeXT 1008; SmolVLM 1536;
    CLIP/SigLIP/BLIP-2 224-384). A reduced image keeps at least as much, at any aspect ratio."""
    for width, height in [(9000, 9000), (20_000, 2000), (2000, 20_000), (20_000, 4000)]:
        target = reduced_size((width, height), DEFAULT_MAX_DECODED_PIXELS)
        assert target is not None
        assert target[0] * target[1] >= 12_845_056
        assert max(target) >= 2304 and min(target) >= 384


def jpeg_load_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records the size each JPEG is decoded at (after draft mode, before any resize)."""
    sizes: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.load

    def load(self):  # type: ignore[no-untyped-def]
        sizes.append(self.size)
        return original(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    return sizes


def test_big_jpeg_is_reduced_inside_the_decoder(tmp_path: Path, monkeypatch) -> None:
    textured(800, 600).save(tmp_path / "big.jpg", quality=95)
    bound = 150 * 100  # target 141 x 106: draft decodes at 1/4 (200 x 150), Lanczos does the rest
    sizes = jpeg_load_sizes(monkeypatch)
    image = open_image(tmp_path / "big.jpg", settings=DecodeSettings(max_decoded_pixels=bound))
    assert set(sizes) == {(200, 150)}  # never at full size
    assert image.size == (141, 106) and image.mode == "RGB"
    reference = old_open_image(tmp_path / "big.jpg").resize((141, 106), Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(image, float) - np.asarray(reference, float))
    assert difference.mean() < 3.0  # the same picture, resampled from a smaller decode


def test_big_jpeg_with_exif_rotation_comes_back_upright(tmp_path: Path) -> None:
    photo = textured(800, 400)
    save_with_orientation(photo, tmp_path / "phone.jpg", 6)  # stored sideways: turn 90 degrees
    image = open_image(tmp_path / "phone.jpg", settings=DecodeSettings(max_decoded_pixels=20_000))
    assert image.size == (100, 200)  # upright, portrait
    reference = old_open_image(tmp_path / "phone.jpg").resize((100, 200), Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(image, float) - np.asarray(reference, float))
    assert difference.mean() < 3.0
    sideways = open_image(
        tmp_path / "phone.jpg",
        settings=DecodeSettings(max_decoded_pixels=20_000, exif_orientation=False),
    )
    assert sideways.size == (200, 100)


def test_big_png_and_16bit_are_reduced_after_decoding(tmp_path: Path) -> None:
    textured(400, 300).save(tmp_path / "big.png")
    image = open_image(tmp_path / "big.png", settings=DecodeSettings(max_decoded_pixels=10_000))
    assert image.size == (115, 86)
    reference = old_open_image(tmp_path / "big.png").resize((115, 86), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(image), np.asarray(reference))  # same rule, same pixels
    ramp = np.tile(np.arange(400, dtype=np.uint16) * 160, (300, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    deep = np.asarray(
        open_image(tmp_path / "deep.png", settings=DecodeSettings(max_decoded_pixels=10_000))
    )[..., 0]
    assert deep.shape == (86, 115) and deep.max() > 240  # scaled by 16-bit range, not clipped


def test_errors_are_kept_for_big_images(tmp_path: Path) -> None:
    textured(400, 300).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    small = DecodeSettings(max_decoded_pixels=10_000)
    with pytest.raises(BadExampleError, match="truncated or corrupt"):
        open_image(tmp_path / "cut.jpg", settings=small)
    with pytest.raises(BadExampleError, match="decompression bomb"):
        open_image(tmp_path / "whole.jpg", max_pixels=1000, settings=small)


def most_decodes_at_once(folder: Path, settings: DecodeSettings, monkeypatch) -> int:
    """Open every file in ``folder`` from its own thread; count the pixel decodes under way at
    once (each made slow, so that overlaps show)."""
    active, most = [0], [0]
    guard = threading.Lock()
    for cls in (JpegImagePlugin.JpegImageFile, PngImagePlugin.PngImageFile):
        original = cls.load

        def counting(self, original=original):  # type: ignore[no-untyped-def]
            if not self.tile:  # already decoded: nothing to count
                return original(self)
            with guard:
                active[0] += 1
                most[0] = max(most[0], active[0])
            time.sleep(0.1)
            try:
                return original(self)
            finally:
                with guard:
                    active[0] -= 1

        monkeypatch.setattr(cls, "load", counting)
    threads = [
        threading.Thread(target=open_image, args=(path,), kwargs={"settings": settings})
        for path in sorted(folder.iterdir())
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return most[0]


def test_big_decodes_are_one_at_a_time_small_ones_in_parallel(tmp_path: Path, monkeypatch):
    from vlmclf.data import images

    for index in range(4):  # PNGs decode at full size, JPEGs through draft mode: both count
        textured(400, 300, seed=index).save(tmp_path / f"{index}.{'png' if index % 2 else 'jpg'}")
    reduced = DecodeSettings(max_decoded_pixels=10_000)
    assert most_decodes_at_once(tmp_path, reduced, monkeypatch) > 1  # 200 x 150 and 400 x 300
    monkeypatch.setattr(images, "BIG_DECODE_PIXELS", 20_000)  # both are now "big"
    assert most_decodes_at_once(tmp_path, reduced, monkeypatch) == 1
    assert most_decodes_at_once(tmp_path, decode_settings_for(0), monkeypatch) == 1  # no bound


def test_the_bound_is_in_the_identity_and_off_means_the_old_identity() -> None:
    default = image_preprocessing_identity(None)
    assert default["max_decoded_pixels"] == DEFAULT_MAX_DECODED_PIXELS
    with decoding_with(decode_settings_for(2048 * 2048)):
        assert image_preprocessing_identity(None) != default
    with decoding_with(decode_settings_for(0)):
        off = image_preprocessing_identity(None)
    assert "max_decoded_pixels" not in off  # the key did not exist before the bound
    assert off == {k: v for k, v in default.items() if k != "max_decoded_pixels"}
    assert image_preprocessing_identity(None) == default  # restored after the block
    assert decode_settings_for(None) == DEFAULT_DECODE
