"""Reading and writing image files as they are (orientation, alpha, 16 bits, colour profile), converting images to
and from tensors, resizing, and writing files atomically."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
"""The suffixes searched for in folders (any case); a file named directly is read whatever its suffix."""
IMAGE_FORMATS = "PNG/JPEG/WebP/TIFF"
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
"""The formats images are written in, by suffix."""
ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")
SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")
DEFAULT_MAX_PIXELS = 89_478_485
"""Images with more pixels are refused unless asked for: Pillow's decompression-bomb threshold (about 9459 x 9459)."""


class ImageFileError(ValueError):
    """An image file that cannot be read, processed or written: ``path`` and a one-line ``reason``."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ImageReadError(ImageFileError):
    """An input that is missing, not an image, damaged, or over the pixel limit."""


class NoImagesError(ValueError):
    """Folders without a single image of a supported format."""

    def __init__(self, folders: Iterable[str | Path]):
        super().__init__(f"no {IMAGE_FORMATS} images in {', '.join(map(str, folders))}")


def find_images(inputs: Iterable[str | Path], recursive: bool = False) -> list[Path]:
    """Expand files and folders into a list of image files: each folder's files with a suffix of
    :data:`IMAGE_SUFFIXES`, sorted, in its subfolders too when ``recursive``; hidden files and folders are left out.

    Files named directly are kept whatever their suffix, so that a bad one is reported rather than skipped.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            candidates = item.rglob("*") if recursive else item.iterdir()
            found.extend(sorted(
                path for path in candidates
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in path.relative_to(item).parts)
            ))
        else:
            found.append(item)
    return found


@dataclass
class ImageData:
    """An image file's pixels, upright, with the metadata that is written back with them."""

    pixels: np.ndarray
    """``[H, W, C]`` uint8 or uint16; C is 1 (grey), 2 (grey and alpha), 3 (RGB) or 4 (RGBA)."""
    icc_profile: bytes | None = None
    exif: bytes | None = None
    """The EXIF block without the orientation (already applied) and the pixel dimensions."""
    dpi: tuple[float, float] | None = None
    frames: int = 1
    """Frames or pages in the file; only the first is read."""

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, as PIL gives it."""
        return self.pixels.shape[1], self.pixels.shape[0]

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def grayscale(self) -> bool:
        return self.pixels.shape[-1] < 3

    @property
    def has_alpha(self) -> bool:
        return self.pixels.shape[-1] in (2, 4)

    @property
    def transparent(self) -> bool:
        """Whether some pixel is not fully opaque."""
        return self.has_alpha and bool((self.pixels[..., -1] < np.iinfo(self.pixels.dtype).max).any())

    def color(self) -> torch.Tensor:
        """The colour channels as a ``[1, 3, H, W]`` float32 tensor in ``[0, 1]`` (grey repeated three times)."""
        return _to_float(self.pixels[..., :1].repeat(3, axis=-1) if self.grayscale else self.pixels[..., :3])

    def alpha(self) -> torch.Tensor | None:
        """The alpha channel as a ``[1, 1, H, W]`` float32 tensor in ``[0, 1]``, or None."""
        return _to_float(self.pixels[..., -1:]) if self.has_alpha else None

    def with_pixels(self, color: torch.Tensor, alpha: torch.Tensor | None = None) -> ImageData:
        """This image's layout, bit depth and metadata around new ``[1, 3, H, W]`` colour (stored as grey when this
        image is grey) and ``[1, 1, H, W]`` alpha in ``[0, 1]``; the resolution (dpi) grows with the size, so that
        the physical size stays."""
        channels = [to_grayscale(color) if self.grayscale else color] + ([alpha] if alpha is not None else [])
        pixels = _quantize(torch.cat(channels, dim=1)[0], self.bit_depth)
        scale = pixels.shape[1] / self.pixels.shape[1]
        dpi = tuple(value * scale for value in self.dpi) if self.dpi else None
        return replace(self, pixels=pixels, dpi=dpi, frames=1)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` RGB to ``[B, 1, H, W]`` luma with ITU-R 601-2 weights, as PIL's ``convert("L")``."""
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _to_float(pixels: np.ndarray) -> torch.Tensor:
    scaled = pixels.astype(np.float32) / float(np.iinfo(pixels.dtype).max)
    return torch.from_numpy(scaled).permute(2, 0, 1).unsqueeze(0).contiguous()


def _quantize(image: torch.Tensor, bit_depth: int) -> np.ndarray:
    """``[C, H, W]`` floats in ``[0, 1]`` as ``[H, W, C]`` integers of ``bit_depth`` bits (rounded)."""
    levels = 2**bit_depth - 1
    array = image.detach().float().clamp(0, 1).mul(levels).round().permute(1, 2, 0).cpu().numpy()
    return array.astype(np.uint8 if bit_depth == 8 else np.uint16)


# -- reading -----------------------------------------------------------------------------------------------------

_READ_MODES = {
    "1": "L", "L": "L", "LA": "LA", "La": "LA", "P": "RGB", "PA": "RGBA", "RGB": "RGB", "RGBX": "RGB",
    "RGBA": "RGBA", "RGBa": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "HSV": "RGB",
    "I;16": "I;16", "I;16B": "I;16", "I;16L": "I;16", "I;16N": "I;16",
}
"""The file's PIL mode -> the mode its pixels are read in."""
_WITH_TRANSPARENCY = {"L": "LA", "RGB": "RGBA"}
"""Read modes of files that name a transparent colour or palette entries (PNG tRNS, GIF)."""
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error)
_PILLOW_LIMIT = threading.Lock()


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageData:
    """Read an image file as it is meant to be seen: EXIF orientation applied; grey, palette, CMYK and alpha
    converted to grey or RGB with or without alpha; 16 bits kept; the ICC profile kept (CMYK with a profile is
    converted to sRGB through it); only the first frame of an animation. Raises :class:`ImageReadError` with the
    reason when the file is missing, not an image, damaged or has more than ``max_pixels`` pixels (None: no limit).
    """
    path = Path(path)
    with _open(path, max_pixels) as image:
        try:
            bands, icc_profile = _bands(path, image)
            bands = _upright(bands, image.getexif())
            exif = _kept_exif(image.info.get("exif"))
        except _DECODE_ERRORS as error:
            raise ImageReadError(path, f"damaged or truncated image ({error})") from None
        return ImageData(
            np.stack([np.asarray(band) for band in bands], axis=-1), icc_profile=icc_profile, exif=exif,
            dpi=_dpi(image), frames=getattr(image, "n_frames", 1),
        )


def load_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """:func:`read_image` as an 8-bit RGB PIL image (alpha dropped), for code that works in RGB."""
    return tensor_to_pil(read_image(path, max_pixels).color())[0]


def _open(path: Path, max_pixels: int | None) -> Image.Image:
    """Open (headers only), refusing what is not an image or is larger than ``max_pixels``."""
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "is an empty file (0 bytes)")
    with _PILLOW_LIMIT:  # the limit below replaces Pillow's own, which would warn or fail at its size instead
        pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(path)
        except UnidentifiedImageError:
            with path.open("rb") as file:
                tiff = file.read(4) in (b"II*\0", b"MM\0*")
            reason = "a TIFF layout Pillow cannot open (such as 16-bit grey with alpha); save it as PNG" if tiff \
                else f"not an image ({IMAGE_FORMATS} expected)"
            raise ImageReadError(path, reason) from None
        except _DECODE_ERRORS as error:
            raise ImageReadError(path, f"damaged or truncated image ({error})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageReadError(
            path, f"is {width} x {height} = {width * height / 1e6:.1f} megapixels, over the limit of "
                  f"{max_pixels / 1e6:.1f}; if the image is genuine, raise max_pixels (CLI: --max-pixels, 0 for none)"
        )
    return image


def _bands(path: Path, image: Image.Image) -> tuple[list[Image.Image], bytes | None]:
    """The pixels as single-band L or I;16 images (grey, grey + alpha, RGB or RGBA) and the ICC profile that
    describes them."""
    icc_profile = image.info.get("icc_profile") or None
    if _stores_16_bit_channels(image):
        pixels = _read_png_16(path) if image.format == "PNG" else _read_tiff_16(path)
        return [Image.fromarray(np.ascontiguousarray(pixels[..., c])) for c in range(pixels.shape[-1])], icc_profile
    if image.mode not in _READ_MODES:
        raise ImageReadError(path, f"has {image.mode} pixels, which are not supported: save it as 8- or 16-bit grey "
                                   "or RGB")
    mode = _READ_MODES[image.mode]
    if "transparency" in image.info:
        mode = _WITH_TRANSPARENCY.get(mode, mode)
    if image.mode == "CMYK" and icc_profile is not None:
        srgb = ImageCms.createProfile("sRGB")
        try:
            image = ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(icc_profile)), srgb,
                                              outputMode="RGB")
        except (ImageCms.PyCMSError, OSError) as error:
            raise ImageReadError(path, f"has a CMYK colour profile that cannot be used ({error})") from None
        icc_profile = ImageCms.ImageCmsProfile(srgb).tobytes()
    return list(image.convert(mode).split()), icc_profile


def _stores_16_bit_channels(image: Image.Image) -> bool:
    """Whether the file is a 16-bit PNG or TIFF with more than one channel, which Pillow would read as 8 bits."""
    if image.mode.startswith("I;16"):
        return False
    if image.format == "PNG":
        return bool(image.tile) and ";16" in str(image.tile[0][3])  # the raw mode, e.g. RGB;16B
    if image.format == "TIFF":
        bits = image.tag_v2.get(258, 8)  # BitsPerSample
        return max(bits if isinstance(bits, tuple) else (bits,)) == 16
    return False


def _read_png_16(path: Path) -> np.ndarray:
    import png

    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        return np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, info["planes"])
    except png.Error as error:
        raise ValueError(str(error)) from None


def _read_tiff_16(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages.first
        if page.photometric not in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.MINISBLACK):
            raise ImageReadError(path, f"16-bit TIFF with {page.photometric.name} pixels is not supported")
        pixels = page.asarray()
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
            pixels = np.moveaxis(pixels, 0, -1)
    return pixels.astype(np.uint16).reshape(*pixels.shape[:2], -1)


def _upright(bands: list[Image.Image], exif: Image.Exif) -> list[Image.Image]:
    """Each band turned by the file's EXIF orientation with ``ImageOps.exif_transpose``."""
    orientation = Image.Exif()
    orientation[ExifTags.Base.Orientation] = exif.get(ExifTags.Base.Orientation, 1)
    for band in bands:
        band.info["exif"] = orientation.tobytes()
    return [ImageOps.exif_transpose(band) for band in bands]


def _kept_exif(block: bytes | None) -> bytes | None:
    """The EXIF block less what no longer holds after reading and upscaling: orientation and pixel dimensions."""
    if not block:
        return None
    exif = Image.Exif()
    exif.load(block)
    exif.pop(ExifTags.Base.Orientation, None)
    if ExifTags.IFD.Exif in exif:
        exif_ifd = exif.get_ifd(ExifTags.IFD.Exif)
        for tag in (ExifTags.Base.ExifImageWidth, ExifTags.Base.ExifImageHeight):
            exif_ifd.pop(tag, None)
    return exif.tobytes() if len(exif) else None


def _dpi(image: Image.Image) -> tuple[float, float] | None:
    """The resolution, when the file states one (Pillow gives TIFFs without one a resolution of 1)."""
    if image.format == "TIFF" and 282 not in image.tag_v2:  # XResolution
        return None
    dpi = image.info.get("dpi")
    return (float(dpi[0]), float(dpi[1])) if dpi and all(dpi) else None


# -- writing -----------------------------------------------------------------------------------------------------


def output_format(path: str | Path) -> str:
    """The format an output path is written in (PIL's name), from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"cannot write {suffix or 'files without a suffix'}: use one of {', '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[suffix]


def check_writable(image: ImageData, path: str | Path) -> None:
    """Raise :class:`ImageFileError` when ``path``'s format cannot hold ``image``: transparency in a JPEG.
    (16 bits are written as 8 in JPEG and WebP, which have no more; opaque alpha is left out of a JPEG.)"""
    if output_format(path) not in ALPHA_FORMATS and image.transparent:
        raise ImageFileError(Path(path), f"has transparency, which {output_format(path)} cannot hold: write it as "
                                         "PNG, WebP or TIFF")


def write_image(image: ImageData, path: str | Path, quality: int = 95) -> Path:
    """Write atomically in the format of ``path``'s suffix, with the ICC profile, EXIF (not in TIFF) and
    resolution; 16 bits in PNG and TIFF; ``quality`` for JPEG and WebP."""
    path = Path(path)
    check_writable(image, path)
    format = output_format(path)
    pixels = image.pixels
    if format not in SIXTEEN_BIT_FORMATS and pixels.dtype == np.uint16:
        pixels = np.round(pixels / 257.0).astype(np.uint8)
    if format not in ALPHA_FORMATS and image.has_alpha:
        pixels = pixels[..., :-1]
    if pixels.dtype == np.uint16 and pixels.shape[-1] > 1:
        write = _write_png_16 if format == "PNG" else _write_tiff_16
        return atomic_write(path, lambda temporary: write(pixels, temporary, image))
    options: dict[str, Any] = {"icc_profile": image.icc_profile, "dpi": image.dpi}
    if format != "TIFF":
        options["exif"] = image.exif
    if format in ("JPEG", "WEBP"):
        options["quality"] = quality
    if format == "TIFF":
        options["compression"] = "tiff_adobe_deflate"
    options = {key: value for key, value in options.items() if value is not None}
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    return atomic_write(path, lambda temporary: picture.save(temporary, format=format, **options))


def _write_png_16(pixels: np.ndarray, path: Path, image: ImageData) -> None:
    import png

    height, width, channels = pixels.shape
    resolution = {}
    if image.dpi:  # pixels per metre
        x, y = (round(dpi / 0.0254) for dpi in image.dpi)
        resolution = dict(x_pixels_per_unit=x, y_pixels_per_unit=y, unit_is_meter=True)
    writer = png.Writer(width, height, greyscale=channels < 3, alpha=channels in (2, 4), bitdepth=16, **resolution)
    encoded = io.BytesIO()
    writer.write(encoded, pixels.reshape(height, width * channels))
    header, *rest = png.Reader(bytes=encoded.getvalue()).chunks()
    extra = []
    if image.icc_profile:
        extra.append((b"iCCP", b"ICC profile\0\0" + zlib.compress(image.icc_profile)))
    if image.exif:
        extra.append((b"eXIf", image.exif.removeprefix(b"Exif\0\0")))
    with path.open("wb") as file:
        png.write_chunks(file, [header, *extra, *rest])


def _write_tiff_16(pixels: np.ndarray, path: Path, image: ImageData) -> None:
    import tifffile

    options: dict[str, Any] = {"iccprofile": image.icc_profile}
    if image.dpi:
        options.update(resolution=image.dpi, resolutionunit="inch")
    tifffile.imwrite(
        path, pixels, photometric="minisblack" if pixels.shape[-1] < 3 else "rgb", compression="zlib",
        extrasamples=("unassalpha",) if pixels.shape[-1] in (2, 4) else None, **options,
    )


def update_hash(digest: Any, path: str | Path) -> None:
    """Feed a file's bytes to a ``hashlib`` object in 16 MiB chunks."""
    with Path(path).open("rb") as reader:
        while chunk := reader.read(1 << 24):
            digest.update(chunk)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a ``[1, 3, H, W]`` float tensor in ``[0, 1]``."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` tensors in ``[0, 1]`` as 8-bit RGB PIL images."""
    return [Image.fromarray(array) for array in tensor_to_uint8(images)]


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` tensors in ``[0, 1]`` as a ``[B, H, W, 3]`` uint8 array (rounded)."""
    array = images.detach().float().clamp(0, 1).mul_(255).round_().byte().permute(0, 2, 3, 1)
    return array.cpu().numpy()


def images_to_tensor(images: Image.Image | np.ndarray | torch.Tensor | list) -> torch.Tensor:
    """Accept a PIL image, an ``[H, W, 3]`` / ``[B, H, W, 3]`` uint8 array or float array in ``[0, 1]``, a
    ``[3, H, W]`` / ``[B, 3, H, W]`` tensor in ``[0, 1]``, or a list of same-sized images; return
    ``[B, 3, H, W]`` float32. Floats outside ``[0, 1]`` (such as 0-255 values) are refused, not clipped."""
    if isinstance(images, list):
        tensors = [images_to_tensor(image) for image in images]
        sizes = {tuple(t.shape[-2:]) for t in tensors}
        if len(sizes) > 1:
            raise ValueError(f"Images in one batch must share a size, got {sorted(sizes)}; pass them one by one")
        return torch.cat(tensors)
    if isinstance(images, Image.Image):
        return pil_to_tensor(images)
    if isinstance(images, np.ndarray):
        array = images[None] if images.ndim == 3 else images
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"Expected an [H, W, 3] or [B, H, W, 3] array, got shape {images.shape}")
        array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        return images_to_tensor(torch.from_numpy(array).permute(0, 3, 1, 2).contiguous())
    if isinstance(images, torch.Tensor):
        tensor = images[None] if images.ndim == 3 else images
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise ValueError(f"Expected a [3, H, W] or [B, 3, H, W] tensor, got shape {tuple(images.shape)}")
        tensor = tensor.float()
        low, high = (tensor.min().item(), tensor.max().item()) if tensor.numel() else (0.0, 1.0)
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"Float images must be in [0, 1], got values from {low:g} to {high:g}: divide 0-255 "
                             "values by 255 (or pass uint8), 0-65535 values by 65535")
        return tensor
    raise TypeError(f"Unsupported image type {type(images).__name__}: pass PIL images, numpy arrays or tensors")


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(temporary_path)`` and move the result to ``path`` only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual permissions
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Save atomically; the format follows the suffix of ``path``."""
    return atomic_write(path, lambda temporary: image.save(temporary, format=Image.registered_extensions()[Path(path).suffix.lower()]))


def save_text(text: str, path: str | Path) -> Path:
    """Write a UTF-8 text file atomically."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _bicubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """PIL's bicubic kernel (a = -0.5; PyTorch's bicubic uses -0.75)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _resample_matrix(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """``[out, in]`` weights of PIL's antialiased bicubic resampling along one axis."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    centers = (torch.arange(out_size, device=device, dtype=torch.float64) + 0.5) * scale
    sources = torch.arange(in_size, device=device, dtype=torch.float64) + 0.5
    support = 2.0 * stretch
    in_window = (sources[None] >= (centers[:, None] - support + 0.5).floor().clamp(min=0)) & (
        sources[None] < (centers[:, None] + support + 0.5).floor() + 0.5
    )
    weights = _bicubic((sources[None] - centers[:, None]) / stretch) * in_window
    return weights / weights.sum(dim=1, keepdim=True)


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` images in ``[0, 1]`` to ``size = (height, width)`` as PIL's ``Image.resize`` with
    ``BICUBIC`` does for 8-bit images (antialiased when shrinking; horizontal pass, clipping, vertical pass,
    clipping), in floating point without the 8-bit rounding, on the images' device."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    rows = _resample_matrix(images.shape[-2], size[0], images.device)
    cols = _resample_matrix(images.shape[-1], size[1], images.device)
    resized = images.new_empty(*images.shape[:2], *size)
    for channel in range(images.shape[1]):  # one channel at a time keeps the float64 copies small
        plane = torch.einsum("bchw,pw->bchp", images[:, channel:channel + 1].double(), cols).clamp_(0, 1)
        resized[:, channel:channel + 1] = torch.einsum("oh,bchp->bcop", rows, plane).clamp_(0, 1)
    return resized
