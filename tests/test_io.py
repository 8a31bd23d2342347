import os
import re

import numpy as np
import pytest
import tifffile
import torch
from image_cases import SRGB_PROFILE, UPRIGHT_TO_STORED, quadrants, write_bad_images, write_good_images
from PIL import ExifTags, Image

from addsr.io import (
    ImageData, ImageFileError, ImageReadError, find_images, images_to_tensor, load_image, pil_to_tensor, read_image,
    resize_images, save_image, tensor_to_uint8, write_image,
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


# -- image files as they are ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    return folder, write_good_images(folder)


@pytest.mark.parametrize("name", [
    "rgba.png", "rgba.webp", "gray-alpha.png", "palette.png", "gray8.png", "gray16.png", "rgb16.png", "rgb16.tif",
    "cmyk.jpg", "orientation3.jpg", "orientation6.jpg", "orientation8.jpg", "profile.png", "animated.gif",
    "one-pixel.png",
])
def test_read_image_keeps_what_the_file_holds(good_images, name):
    folder, expected = good_images
    image = read_image(folder / name)
    assert image.size == expected[name].size
    assert image.pixels.shape[-1] == expected[name].channels
    assert image.bit_depth == expected[name].bits
    assert image.icc_profile == expected[name].icc_profile
    assert image.frames == (3 if name == "animated.gif" else 1)


def test_sixteen_bits_are_read_exactly(good_images):
    folder, _ = good_images
    with Image.open(folder / "gray16.png") as gray:
        assert np.array_equal(read_image(folder / "gray16.png").pixels[..., 0], np.asarray(gray))
    png_pixels, tiff_pixels = read_image(folder / "rgb16.png").pixels, read_image(folder / "rgb16.tif").pixels
    assert np.array_equal(png_pixels, tifffile.imread(folder / "rgb16.tif")) and np.array_equal(tiff_pixels, png_pixels)
    assert (png_pixels % 257 != 0).any()  # not 8-bit values scaled up


def test_transparency_becomes_alpha(good_images):
    folder, _ = good_images
    rgba = read_image(folder / "rgba.png").pixels
    assert (rgba[:, :6, 3] == 0).all() and (rgba[:, 6:, 3] == 255).all()
    palette = read_image(folder / "palette.png").pixels
    assert (palette[:, :6, 3] == 0).all() and (palette[:, 6:, 3] == 255).all()


@pytest.mark.parametrize("orientation", sorted(UPRIGHT_TO_STORED))
def test_exif_orientation_is_applied_and_removed(good_images, orientation):
    folder, _ = good_images
    image = read_image(folder / f"orientation{orientation}.jpg")
    error = np.abs(image.pixels.astype(int) - quadrants(12, 16)).mean()
    assert error < 20  # upright, up to JPEG's losses (turned the wrong way: over 120)
    exif = Image.Exif()
    exif.load(image.exif)
    assert 0x0112 not in exif and exif[0x010F] == "addsr-test"


def test_cmyk_is_converted_to_rgb(good_images):
    folder, _ = good_images
    with Image.open(folder / "cmyk.jpg") as cmyk:
        assert cmyk.mode == "CMYK"
        expected = np.asarray(cmyk.convert("RGB"))
    assert np.array_equal(read_image(folder / "cmyk.jpg").pixels, expected)


def test_bad_files_are_refused_with_their_reason(tmp_path):
    for name, reason in write_bad_images(tmp_path).items():
        with pytest.raises(ImageReadError, match=re.escape(reason)) as caught:
            read_image(tmp_path / name)
        assert caught.value.path == tmp_path / name and "\n" not in caught.value.reason


def test_pixel_limit(tmp_path):
    path = write_png(tmp_path / "a.png", size=(20, 10))
    with pytest.raises(ImageReadError, match="20 x 10 = 0.0 megapixels, over the limit of 0.0"):
        read_image(path, max_pixels=199)
    assert read_image(path, max_pixels=200).size == read_image(path, max_pixels=None).size == (20, 10)


@pytest.mark.parametrize("name", ["rgba.png", "gray-alpha.png", "gray16.png", "rgb16.png", "profile.png"])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_write_image_round_trips_exactly(good_images, tmp_path, name, suffix):
    folder, _ = good_images
    image = read_image(folder / name)
    image.dpi = (72.0, 96.0)
    written = read_image(write_image(image, tmp_path / f"out{suffix}"))
    assert written.pixels.dtype == image.pixels.dtype and np.array_equal(written.pixels, image.pixels)
    assert written.icc_profile == image.icc_profile
    assert np.allclose(written.dpi, image.dpi, atol=0.02)  # PNG stores pixels per metre
    assert [p.name for p in tmp_path.iterdir()] == [f"out{suffix}"]


def test_write_image_keeps_exif_and_profile_in_jpeg_and_webp(good_images, tmp_path):
    folder, _ = good_images
    image = read_image(folder / "orientation6.jpg")
    image.icc_profile = SRGB_PROFILE
    for suffix in (".jpg", ".webp", ".png"):
        with Image.open(write_image(image, tmp_path / f"out{suffix}")) as written:
            assert written.getexif()[0x010F] == "addsr-test" and 0x0112 not in written.getexif()
            assert written.info["icc_profile"] == SRGB_PROFILE and written.size == (12, 16)


def test_formats_without_alpha_or_16_bits(good_images, tmp_path):
    folder, _ = good_images
    with pytest.raises(ImageFileError, match="has transparency, which JPEG cannot hold"):
        write_image(read_image(folder / "rgba.png"), tmp_path / "out.jpg")
    assert list(tmp_path.iterdir()) == []
    opaque = read_image(folder / "rgba.png")
    opaque.pixels[..., 3] = 255
    with Image.open(write_image(opaque, tmp_path / "opaque.jpg")) as written:
        assert written.mode == "RGB"
    sixteen = ImageData(np.full((8, 8, 3), 40000, np.uint16))
    for suffix in (".webp", ".jpg"):
        eight = read_image(write_image(sixteen, tmp_path / f"eight{suffix}", quality=100))
        assert eight.bit_depth == 8 and np.abs(eight.pixels.astype(int) - 156).max() <= 1  # 40000 / 257 = 155.6


def test_with_pixels_keeps_layout_bits_and_physical_size(good_images):
    folder, _ = good_images
    gray = read_image(folder / "gray16.png")
    gray.dpi = (72.0, 72.0)
    color = gray.color()
    assert color.shape == (1, 3, 10, 12) and torch.equal(color[:, 0], color[:, 2])
    bigger = gray.with_pixels(torch.nn.functional.interpolate(color, scale_factor=4))
    assert bigger.pixels.shape == (40, 48, 1) and bigger.bit_depth == 16 and bigger.dpi == (288.0, 288.0)
    assert np.array_equal(gray.with_pixels(color).pixels, gray.pixels)  # 16 bits survive the float round trip
    rgba = read_image(folder / "rgba.png")
    assert np.array_equal(rgba.with_pixels(rgba.color(), rgba.alpha()).pixels, rgba.pixels)


def test_find_images_recursive_skips_hidden_files(tmp_path):
    write_png(tmp_path / "a.TIF")
    (tmp_path / "sub").mkdir()
    write_png(tmp_path / "sub" / "b.png")
    write_png(tmp_path / "sub" / ".b.png.x1y2.png")  # an interrupted atomic write
    assert find_images([tmp_path]) == [tmp_path / "a.TIF"]
    assert find_images([tmp_path], recursive=True) == [tmp_path / "a.TIF", tmp_path / "sub" / "b.png"]


def test_float_images_outside_zero_one_are_refused():
    with pytest.raises(ValueError, match="must be in \\[0, 1\\], got values from 0 to 255"):
        images_to_tensor(np.linspace(0, 255, 12, dtype=np.float32).reshape(2, 2, 3))
    with pytest.raises(ValueError, match="got values from -0.5 to 0.5"):
        images_to_tensor(torch.linspace(-0.5, 0.5, 12).reshape(3, 2, 2))
    array = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert torch.equal(images_to_tensor(array), images_to_tensor(array.astype(np.float32) / 255))


def test_sixteen_bit_colour_with_alpha_and_orientation(tmp_path):
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 65536, (5, 7, 4), dtype=np.uint16)
    for suffix in (".png", ".tif"):
        assert np.array_equal(read_image(write_image(ImageData(rgba), tmp_path / f"rgba{suffix}")).pixels, rgba)
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = read_image(write_image(ImageData(rgba[..., :3], exif=exif.tobytes()), tmp_path / "turned.png"))
    assert np.array_equal(upright.pixels, np.rot90(rgba[..., :3], -1)) and upright.exif is None
    gray_alpha = write_image(ImageData(rgba[..., :2]), tmp_path / "gray-alpha.tif")  # valid, but not for Pillow
    assert np.array_equal(tifffile.imread(gray_alpha), rgba[..., :2])
    with pytest.raises(ImageReadError, match="a TIFF layout Pillow cannot open"):
        read_image(gray_alpha)


def test_exif_keeps_what_still_holds(tmp_path):
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 8, "addsr-test"
    details = exif.get_ifd(ExifTags.IFD.Exif)
    details[ExifTags.Base.ExifImageWidth], details[ExifTags.Base.FNumber] = 12, 2.8
    Image.new("RGB", (12, 10)).save(tmp_path / "a.jpg", exif=exif)
    kept = Image.Exif()
    kept.load(read_image(tmp_path / "a.jpg").exif)
    assert dict(kept.items()).keys() == {0x010F, ExifTags.IFD.Exif}
    assert kept.get_ifd(ExifTags.IFD.Exif) == {ExifTags.Base.FNumber: 2.8}


def test_32_bit_pixels_are_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ImageReadError, match="has F pixels, which are not supported"):
        read_image(tmp_path / "float.tif")


def test_cmyk_with_a_broken_profile_is_named(tmp_path):
    Image.new("CMYK", (4, 4), (0, 50, 100, 0)).save(tmp_path / "cmyk.jpg", icc_profile=b"not a profile")
    with pytest.raises(ImageReadError, match="has a CMYK colour profile that cannot be used"):
        read_image(tmp_path / "cmyk.jpg")
