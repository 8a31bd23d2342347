"""Small image files of every kind a user may have, built in code, and what reading each one should give."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import png
import tifffile
from PIL import Image, ImageCms

SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
QUADRANT_COLORS = ((220, 30, 30), (30, 200, 40), (40, 60, 220), (240, 240, 240))
"""Top left, top right, bottom left, bottom right of the upright test picture."""
UPRIGHT_TO_STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
"""How a camera stores an upright picture under each EXIF orientation (the inverse of what a viewer applies)."""


@dataclass
class Good:
    """A file that must be read: its displayed size, channels and bits per channel."""

    size: tuple[int, int]
    channels: int
    bits: int = 8
    icc_profile: bytes | None = None
    orientation: int | None = None


def quadrants(width: int, height: int) -> np.ndarray:
    """An upright ``[H, W, 3]`` picture of four coloured quadrants."""
    picture = np.zeros((height, width, 3), np.uint8)
    for index, color in enumerate(QUADRANT_COLORS):
        rows = slice(0, height // 2) if index < 2 else slice(height // 2, height)
        cols = slice(0, width // 2) if index % 2 == 0 else slice(width // 2, width)
        picture[rows, cols] = color
    return picture


def write_png_chunks(path: Path, chunks: list[tuple[bytes, bytes]]) -> None:
    with path.open("wb") as file:
        png.write_chunks(file, chunks)


def write_good_images(folder: Path) -> dict[str, Good]:
    """Every readable kind of file, in ``folder``; returns what each is, by file name."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    half_transparent = np.zeros((10, 12, 1), np.uint8)
    half_transparent[:, 6:] = 255
    Image.fromarray(np.concatenate([rgb, half_transparent], axis=-1)).save(folder / "rgba.png")
    Image.fromarray(np.concatenate([rgb, half_transparent], axis=-1)).save(folder / "rgba.webp", lossless=True)
    Image.fromarray(np.concatenate([rgb[..., :1], half_transparent], axis=-1)).save(folder / "gray-alpha.png")
    quantized = Image.fromarray(rgb).quantize(7)
    indexes = np.asarray(quantized) + 1
    indexes[:, :6] = 0  # palette entry 0 is transparent
    palette = Image.frombytes("P", (12, 10), indexes.astype(np.uint8).tobytes())
    palette.putpalette([0, 0, 0, *quantized.getpalette()[:21]])
    palette.save(folder / "palette.png", transparency=0)
    Image.fromarray(rgb[..., 0]).save(folder / "gray8.png")
    Image.fromarray(rng.integers(0, 65536, (10, 12), dtype=np.uint16)).save(folder / "gray16.png")
    rgb16 = rng.integers(0, 65536, (10, 12, 3), dtype=np.uint16)
    with (folder / "rgb16.png").open("wb") as file:
        png.Writer(12, 10, greyscale=False, bitdepth=16).write(file, rgb16.reshape(10, -1))
    tifffile.imwrite(folder / "rgb16.tif", rgb16)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    upright = Image.fromarray(quadrants(12, 16))
    for orientation, transpose in UPRIGHT_TO_STORED.items():
        exif = Image.Exif()
        exif[0x0112] = orientation  # Orientation
        exif[0x010F] = "addsr-test"  # Make: EXIF that still holds after upscaling
        upright.transpose(transpose).save(folder / f"orientation{orientation}.jpg", exif=exif, quality=100)
    Image.fromarray(rgb).save(folder / "profile.png", icc_profile=SRGB_PROFILE)
    frames = [Image.fromarray(np.roll(rgb, shift, axis=1)) for shift in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (1, 1), (90, 120, 30)).save(folder / "one-pixel.png")
    return {
        "rgba.png": Good((12, 10), 4), "rgba.webp": Good((12, 10), 4), "gray-alpha.png": Good((12, 10), 2),
        "palette.png": Good((12, 10), 4), "gray8.png": Good((12, 10), 1), "gray16.png": Good((12, 10), 1, 16),
        "rgb16.png": Good((12, 10), 3, 16), "rgb16.tif": Good((12, 10), 3, 16), "cmyk.jpg": Good((12, 10), 3),
        **{f"orientation{o}.jpg": Good((12, 16), 3, orientation=o) for o in UPRIGHT_TO_STORED},
        "profile.png": Good((12, 10), 3, icc_profile=SRGB_PROFILE), "animated.gif": Good((12, 10), 3),
        "one-pixel.png": Good((1, 1), 3),
    }


def write_bad_images(folder: Path) -> dict[str, str]:
    """Files that must be refused, in ``folder``; returns the start of each one's reason, by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)  # a 60000 x 60000 RGB PNG, 8 bits
    write_png_chunks(folder / "bomb.png", [(b"IHDR", header), (b"IDAT", zlib.compress(bytes(64))), (b"IEND", b"")])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image at all")
    whole = folder / "whole.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(whole)
    data = whole.read_bytes()
    whole.unlink()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    return {
        "bomb.png": "is 60000 x 60000 = 3600.0 megapixels, over the limit of",
        "empty.png": "is an empty file (0 bytes)",
        "notes.jpg": "not an image",
        "truncated.png": "damaged or truncated image",
    }
