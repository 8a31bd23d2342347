"""The four fixed synthetic test degradations of the AddSR paper (Sec. 4, its synthetic test sets)."""

from __future__ import annotations

import torch

from . import ops
from .jpeg import pil_jpeg

PAPER_DEGRADATIONS = ("bicubic", "blur", "noise", "noise_jpeg")
BLUR_SIGMA = 2.0
BLUR_KERNEL_SIZE = 13
"""Not stated by the paper or the released code; ``2 * ceil(3 * sigma) + 1``."""
NOISE_SIGMA = 40.0
NOISE_JPEG_SIGMA = 20.0
JPEG_QUALITY = 50


def _add_gaussian_noise(images: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    batch = images.shape[0]
    sigmas = torch.full((batch,), sigma, device=images.device)
    colour = torch.zeros(batch, dtype=torch.bool, device=images.device)
    return ops.quantize_8bit(images + ops.gaussian_noise(images, sigmas, colour, generator))


@torch.no_grad()
def paper_degradation(
    hr: torch.Tensor, kind: str, generator: torch.Generator | None = None, scale: int = 4
) -> torch.Tensor:
    """Degrade ``[B, 3, H, W]`` HR images in ``[0, 1]`` to ``[B, 3, H/scale, W/scale]`` LR, rounded to 8 bits.

    ``kind``: ``bicubic`` (antialiased bicubic downscaling); ``blur`` (Gaussian blur, sigma 2, then bicubic);
    ``noise`` (bicubic, then colour Gaussian noise of sigma 40 on the 0-255 scale); ``noise_jpeg`` (bicubic, noise of
    sigma 20, then standard JPEG at quality 50). Noise is drawn from ``generator``.
    """
    if kind not in PAPER_DEGRADATIONS:
        raise ValueError(f"Unknown paper degradation {kind!r}: choose one of {', '.join(PAPER_DEGRADATIONS)}")
    if hr.ndim != 4 or hr.shape[1] != 3:
        raise ValueError(f"Expected HR images as a [B, 3, H, W] tensor, got shape {tuple(hr.shape)}")
    images = hr.float()
    if kind == "blur":
        images = ops.gaussian_blur(images, BLUR_SIGMA, BLUR_KERNEL_SIZE)
    lr = ops.quantize_8bit(ops.downscale_bicubic(images, scale))
    if kind == "noise":
        lr = _add_gaussian_noise(lr, NOISE_SIGMA, generator)
    elif kind == "noise_jpeg":
        lr = pil_jpeg(_add_gaussian_noise(lr, NOISE_JPEG_SIGMA, generator), JPEG_QUALITY)
    return lr
