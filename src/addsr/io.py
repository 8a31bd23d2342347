"""Reading, converting and atomically writing images (and hashing files)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class ImageReadError(ValueError):
    """An input that is missing, not an image, or damaged."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into a sorted list of image files (folders: PNG, JPEG, WebP, not recursive).

    Files named directly are kept whatever their suffix, so that a bad one is reported rather than skipped.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(item)
    return found


def load_image(path: str | Path) -> Image.Image:
    """Open an image fully as RGB, raising :class:`ImageReadError` with the reason when that fails."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image PIL can read (PNG, JPEG or WebP expected)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"damaged or truncated image ({error})") from None


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
    array = images.detach().float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1)
    return array.cpu().numpy()


def images_to_tensor(images: Image.Image | np.ndarray | torch.Tensor | list) -> torch.Tensor:
    """Accept a PIL image, an ``[H, W, 3]`` / ``[B, H, W, 3]`` uint8 or float array, a ``[3, H, W]`` /
    ``[B, 3, H, W]`` tensor in ``[0, 1]``, or a list of same-sized images; return ``[B, 3, H, W]`` float32."""
    if isinstance(images, list):
        tensors = [images_to_tensor(image) for image in images]
        sizes = {tuple(t.shape[-2:]) for t in tensors}
        if len(sizes) > 1:
            raise ValueError(f"Images in one batch must share a size, got {sorted(sizes)}; pass them one by one")
        return torch.cat(tensors)
    if isinstance(images, Image.Image):
        return pil_to_tensor(images)
    if isinstance(images, np.ndarray):
        array = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
        array = array[None] if array.ndim == 3 else array
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"Expected an [H, W, 3] or [B, H, W, 3] array, got shape {images.shape}")
        return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    if isinstance(images, torch.Tensor):
        tensor = images[None] if images.ndim == 3 else images
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise ValueError(f"Expected a [3, H, W] or [B, 3, H, W] tensor, got shape {tuple(images.shape)}")
        return tensor.float()
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
    resized = torch.einsum("bchw,pw->bchp", images.double(), cols).clamp(0, 1)
    resized = torch.einsum("oh,bchp->bcop", rows, resized).clamp(0, 1)
    return resized.to(images.dtype)
