import os

import numpy as np
import pytest
import torch
from PIL import Image

from addsr.io import (
    ImageReadError, find_images, load_image, pil_to_tensor, resize_images, save_image, tensor_to_uint8,
)


def write_png(path, size=(12, 10), color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path)
    return path


def test_find_images_expands_folders_and_keeps_named_files(tmp_path):
    write_png(tmp_path / "b.png")
    write_png(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    named = tmp_path / "named.dat"
    named.write_text("x")
    assert find_images([tmp_path, named]) == [tmp_path / "a.png", tmp_path / "b.png", named]


def test_load_image_reasons(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="not an image"):
        load_image(tmp_path / "text.png")
    good = write_png(tmp_path / "good.png", size=(64, 64))
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="damaged or truncated"):
        load_image(tmp_path / "cut.png")
    assert load_image(good).size == (64, 64)


def test_save_image_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    image = Image.new("RGB", (4, 4))

    def broken_save(self, fp, format=None, **kwargs):
        open(fp, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(image, tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_save_image_writes_the_suffix_format(tmp_path):
    path = save_image(Image.new("RGB", (4, 4), (1, 2, 3)), tmp_path / "sub" / "out.png")
    with Image.open(path) as written:
        assert written.format == "PNG" and written.getpixel((0, 0)) == (1, 2, 3)
    assert [p.name for p in path.parent.iterdir()] == ["out.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only mode


@pytest.mark.parametrize("size, new_size", [((20, 28), (80, 112)), ((33, 47), (128, 184)), ((128, 200), (64, 50))])
def test_resize_images_matches_pil_bicubic_within_one_level(size, new_size):
    array = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(array).resize(new_size[::-1], Image.BICUBIC)).astype(int)
    ours = tensor_to_uint8(resize_images(pil_to_tensor(Image.fromarray(array)), new_size))[0].astype(int)
    assert np.abs(ours - expected).max() <= 1  # PIL rounds to 8 bits between its two passes


def test_resize_images_is_a_no_op_at_the_same_size():
    images = torch.rand(1, 3, 8, 8)
    assert resize_images(images, (8, 8)) is images
