"""Colour correction of the restored image against the upscaled LR condition (SPEC section 2, step 8)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

WAVELET_LEVELS = 5


def _channel_mean_std(images: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    flat = images.flatten(2)
    std = (flat.var(dim=2) + eps).sqrt()
    return flat.mean(dim=2)[..., None, None], std[..., None, None]


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Give each channel of ``image`` the mean and standard deviation of ``reference`` (AdaIN)."""
    image_mean, image_std = _channel_mean_std(image)
    reference_mean, reference_std = _channel_mean_std(reference)
    return ((image - image_mean) / image_std * reference_std + reference_mean).clamp(0, 1)


def wavelet_blur(images: torch.Tensor, dilation: int) -> torch.Tensor:
    """A 3x3 [1, 2, 1] x [1, 2, 1] / 16 blur with the given dilation and replicate padding."""
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=images.dtype, device=images.device)
    kernel = (taps[:, None] * taps[None, :] / 16).expand(images.shape[1], 1, 3, 3)
    padded = F.pad(images, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=images.shape[1], dilation=dilation)


def wavelet_decompose(images: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Split into (high frequencies, low frequencies) with ``levels`` blurs of dilation 1, 2, 4, ..."""
    high = torch.zeros_like(images)
    low = images
    for level in range(levels):
        blurred = wavelet_blur(low, 2**level)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``image`` plus low frequencies (colour, shading) of ``reference``."""
    high, _ = wavelet_decompose(image)
    _, reference_low = wavelet_decompose(reference)
    return (high + reference_low).clamp(0, 1)


def no_color_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Leave the image as it is."""
    return image


COLOR_FIXES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "adain": adain_color_fix,
    "wavelet": wavelet_color_fix,
    "none": no_color_fix,
}


def color_fix(image: torch.Tensor, reference: torch.Tensor, method: str = "adain") -> torch.Tensor:
    """Apply the named colour fix to ``[B, 3, H, W]`` images in ``[0, 1]``."""
    if method not in COLOR_FIXES:
        raise ValueError(f"Unknown colour fix {method!r}; choose one of {', '.join(COLOR_FIXES)}")
    return COLOR_FIXES[method](image, reference)
