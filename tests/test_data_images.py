"""open_image: good files decode to RGB; each kind of bad file is a BadExampleError."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from fixtures_data import noisy_jpeg_bytes, png_with_header_size, save_image
from PIL import Image

from vlmclf.data import BadExampleError, load_dataset, open_image
from vlmclf.data.images import DEFAULT_MAX_PIXELS


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("name", ["a.jpg", "b.png", "c.bmp", "d.gif", "e.webp"])
def test_good_images_decode_to_rgb(tmp_path: Path, name: str) -> None:
    save_image(tmp_path / name, 5, size=(9, 7))
    image = open_image(tmp_path / name)
    assert image.mode == "RGB"
    assert image.size == (9, 7)


def test_grayscale_and_transparent_palette_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (4, 4), 200).save(tmp_path / "gray.png")
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(tmp_path / "pal.png", transparency=0)
    gray = open_image(tmp_path / "gray.png")
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (200, 200, 200)
    assert open_image(tmp_path / "pal.png").getpixel((1, 1)) == (255, 0, 0)


def expect_bad(path: Path, reason: str, **kwargs: int) -> str:
    with pytest.raises(BadExampleError) as info:
        open_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    assert reason in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    expect_bad(tmp_path / "nope.jpg", "missing file")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    expect_bad(tmp_path / "empty.jpg", "zero-byte file")


def test_text_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    expect_bad(tmp_path / "text.jpg", "not an image")


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    expect_bad(tmp_path / "dir.jpg", "not a regular file")


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = noisy_jpeg_bytes()
    (tmp_path / "whole.jpg").write_bytes(data)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert open_image(tmp_path / "whole.jpg").size == (64, 64)
    expect_bad(tmp_path / "cut.jpg", "truncated")


def test_truncated_png(tmp_path: Path) -> None:
    save_image(tmp_path / "whole.png", 3, size=(64, 64))
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) - 30])
    expect_bad(tmp_path / "cut.png", "truncated")


def test_bomb_header_far_over_the_cap(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_with_header_size(100_000, 100_000))
    expect_bad(tmp_path / "bomb.png", "decompression bomb")


def test_bomb_header_just_over_the_cap(tmp_path: Path) -> None:
    # Between PIL's warning threshold and its error threshold: the warning must count too.
    side = int(DEFAULT_MAX_PIXELS**0.5) + 100
    (tmp_path / "bomb.png").write_bytes(png_with_header_size(side, side))
    expect_bad(tmp_path / "bomb.png", "decompression bomb")


def test_lowered_pixel_cap(tmp_path: Path) -> None:
    save_image(tmp_path / "real.png", 1, size=(20, 20))
    message = expect_bad(tmp_path / "real.png", "decompression bomb", max_pixels=399)
    assert "cap of 399" in message
    assert open_image(tmp_path / "real.png", max_pixels=400).size == (20, 20)


def test_no_file_handles_left_open(tmp_path: Path) -> None:
    save_image(tmp_path / "ok.jpg", 1)
    (tmp_path / "text.jpg").write_text("nope")
    data = noisy_jpeg_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "bomb.png").write_bytes(png_with_header_size(100_000, 100_000))
    before = open_fds()
    for _ in range(20):
        open_image(tmp_path / "ok.jpg")
        for bad in ("text.jpg", "cut.jpg", "bomb.png"):
            with pytest.raises(BadExampleError):
                open_image(tmp_path / bad)
    assert open_fds() == before


def test_bad_files_fail_only_on_load(tmp_path: Path) -> None:
    save_image(tmp_path / "cat" / "good.jpg", 1)
    (tmp_path / "cat" / "empty.jpg").write_bytes(b"")
    (tmp_path / "dog" / "notes.jpg").parent.mkdir()
    (tmp_path / "dog" / "notes.jpg").write_text("hello")
    (tmp_path / "dog" / "readme.txt").write_text("not listed: not an image extension")
    dataset = load_dataset("imagefolder", data_root=str(tmp_path))
    assert [e.id for e in dataset.examples] == ["cat/empty.jpg", "cat/good.jpg", "dog/notes.jpg"]
    with pytest.raises(BadExampleError, match="zero-byte"):
        dataset.examples[0].load()
    assert dataset.examples[1].load().mode == "RGB"
    with pytest.raises(BadExampleError, match="not an image"):
        dataset.examples[2].load()


def test_file_examples_pickle_for_worker_processes(tmp_path: Path) -> None:
    save_image(tmp_path / "cat" / "a.png", 9, size=(3, 2))
    example = load_dataset("imagefolder", data_root=str(tmp_path)).examples[0]
    clone = pickle.loads(pickle.dumps(example))
    assert clone.id == example.id and clone.load().tobytes() == example.load().tobytes()
