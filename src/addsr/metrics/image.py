"""Input conventions shared by the metrics.

A metric accepts one image at a time, either as

* a numpy array on the 0-255 scale: ``uint8`` (as read from an 8-bit PNG) or float, shaped
  ``[H, W, 3]`` (RGB) or ``[H, W]`` (grey); or
* a float torch tensor on ``[0, 1]``, shaped ``[3, H, W]``, ``[1, 3, H, W]``, ``[1, H, W]`` or
  ``[H, W]`` (RGB or grey). It is scaled by 255 and not quantised; pass ``uint8`` arrays to
  measure images as saved to disk.
"""

from typing import Union

import numpy as np
import torch

from .color import rgb_to_y

Image = Union[np.ndarray, torch.Tensor]


def to_array(img: Image) -> np.ndarray:
    """The image as float64 ``[H, W, 3]`` or ``[H, W]`` on the 0-255 scale."""
    if isinstance(img, torch.Tensor):
        return _tensor_to_array(img)
    if not isinstance(img, np.ndarray):
        raise TypeError(f"expected a numpy array or a torch tensor, got {type(img).__name__}")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3))):
        raise ValueError(f"numpy images must be [H, W, 3] or [H, W], got shape {img.shape}")
    if img.dtype != np.uint8 and not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"numpy images must be uint8 or float (0-255 scale), got dtype {img.dtype}")
    img = img.astype(np.float64)
    return img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img


def _tensor_to_array(img: torch.Tensor) -> np.ndarray:
    if not img.is_floating_point():
        raise TypeError(f"tensor images must be float on [0, 1], got dtype {img.dtype}")
    if img.ndim == 4:
        if img.shape[0] != 1:
            raise ValueError(f"metrics take one image at a time, got a batch of shape {tuple(img.shape)}")
        img = img[0]
    if img.ndim == 3:
        if img.shape[0] not in (1, 3):
            raise ValueError(f"tensor images must be [3, H, W] or [1, H, W], got shape {tuple(img.shape)}")
        img = img.permute(1, 2, 0)
    elif img.ndim != 2:
        raise ValueError(f"tensor images must be [(1,) C, H, W] or [H, W], got shape {tuple(img.shape)}")
    return to_array(img.detach().to("cpu", torch.float64).numpy() * 255.0)


def to_tensor(img: Image) -> torch.Tensor:
    """The image as a float32 ``[1, C, H, W]`` tensor on ``[0, 1]`` (the input pyiqa expects)."""
    arr = to_array(img)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr / 255.0).permute(2, 0, 1)[None].float()


def crop_border(img: np.ndarray, border: int) -> np.ndarray:
    """``img`` without ``border`` pixels on each side."""
    if border < 0:
        raise ValueError(f"crop_border must be >= 0, got {border}")
    if border == 0:
        return img
    h, w = img.shape[:2]
    if 2 * border >= min(h, w):
        raise ValueError(f"crop_border={border} leaves nothing of a {h}x{w} image")
    return img[border:-border, border:-border]


def _select(arr: np.ndarray, border: int, test_y_channel: bool, color_space: str) -> np.ndarray:
    arr = crop_border(arr, border)
    return rgb_to_y(arr, color_space) if test_y_channel and arr.ndim == 3 else arr


def prepare(img: Image, border: int, test_y_channel: bool, color_space: str) -> np.ndarray:
    """Cropped image on the 0-255 scale; its Y channel when asked and the image is RGB."""
    return _select(to_array(img), border, test_y_channel, color_space)


def prepare_pair(
    img1: Image, img2: Image, border: int, test_y_channel: bool, color_space: str
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`prepare` for two images that must have the same shape."""
    arr1, arr2 = to_array(img1), to_array(img2)
    if arr1.shape != arr2.shape:
        raise ValueError(f"images must have the same shape, got {arr1.shape} and {arr2.shape}")
    return (
        _select(arr1, border, test_y_channel, color_space),
        _select(arr2, border, test_y_channel, color_space),
    )
