"""Batched image operations of the degradation pipelines: blur, resize, noise, USM sharpening, 8-bit rounding.

Images are ``[B, C, H, W]`` float tensors in ``[0, 1]``; per-sample parameters are ``[B]`` tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import draws
from .kernels import gaussian_kernel_1d


def _pad(images: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Mirror padding (``cv2.BORDER_REFLECT_101``); edge replication where the image is too small to mirror."""
    height, width = images.shape[-2:]
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(images, (pad_w, pad_w, pad_h, pad_h), mode=mode)


def filter2d(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of each image with its own odd-sized kernel (``[B, k, k]``, or ``[k, k]`` for all)."""
    batch, channels, height, width = images.shape
    kernels = kernels.to(images)
    if kernels.ndim == 2:
        kernels = kernels.expand(batch, *kernels.shape)
    size = kernels.shape[-1]
    if size % 2 == 0 or kernels.shape[-2] != size or kernels.shape[0] != batch:
        raise ValueError(f"Expected {batch} square odd-sized kernels, got kernels of shape {tuple(kernels.shape)}")
    padded = _pad(images, size // 2, size // 2).reshape(1, batch * channels, height + size - 1, width + size - 1)
    weight = kernels.repeat_interleave(channels, dim=0).unsqueeze(1)
    return F.conv2d(padded, weight, groups=batch * channels).view(batch, channels, height, width)


def separable_filter(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve with the outer product of an odd 1-D ``kernel`` with itself (same kernel for all images)."""
    batch, channels, height, width = images.shape
    size = kernel.numel()
    kernel = kernel.to(images)
    flat = _pad(images, size // 2, size // 2).reshape(batch * channels, 1, height + size - 1, width + size - 1)
    flat = F.conv2d(flat, kernel.view(1, 1, size, 1))
    flat = F.conv2d(flat, kernel.view(1, 1, 1, size))
    return flat.view(batch, channels, height, width)


def gaussian_blur(images: torch.Tensor, sigma: float, size: int) -> torch.Tensor:
    """Isotropic Gaussian blur with a ``size x size`` kernel."""
    return separable_filter(images, gaussian_kernel_1d(size, sigma))


def resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize to ``size = (height, width)`` with ``area``, ``bilinear`` or ``bicubic`` (no antialiasing)."""
    if mode not in ("area", "bilinear", "bicubic"):
        raise ValueError(f"Unknown resize mode {mode!r}: use 'area', 'bilinear' or 'bicubic'")
    size = (max(1, int(size[0])), max(1, int(size[1])))
    align_corners = None if mode == "area" else False
    return F.interpolate(images, size=size, mode=mode, align_corners=align_corners)


def downscale_bicubic(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downscaling by ``scale`` (Keys a = -0.5 widened by ``scale``, like MATLAB's imresize)."""
    size = (images.shape[-2] // scale, images.shape[-1] // scale)
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of RGB images, ``[B, 1, H, W]``."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Clamp to ``[0, 1]`` and round to the nearest of the 256 8-bit levels."""
    return torch.clamp((images * 255.0).round(), 0, 255) / 255.0


def gaussian_noise(
    images: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Zero-mean Gaussian noise with per-sample ``sigma`` (0-255 scale); ``gray`` samples share it over channels."""
    batch, channels, height, width = images.shape
    colour = draws.normal((batch, channels, height, width), generator, images.device)
    shared = draws.normal((batch, 1, height, width), generator, images.device).expand_as(colour)
    noise = torch.where(gray.view(-1, 1, 1, 1), shared, colour)
    return noise * (sigma.to(images).view(-1, 1, 1, 1) / 255.0)


def _poisson_levels(images: torch.Tensor) -> torch.Tensor:
    """Per sample, the number of distinct 8-bit values rounded up to a power of two (the Poisson photon scale)."""
    codes = (images * 255.0).round().clamp(0, 255).long().flatten(1)
    histogram = torch.zeros(codes.shape[0], 256, device=images.device)
    histogram.scatter_add_(1, codes, torch.ones_like(codes, dtype=torch.float32))
    distinct = (histogram > 0).sum(dim=1).clamp(min=1).float()
    return torch.exp2(torch.ceil(torch.log2(distinct))).view(-1, 1, 1, 1).to(images)


def _shot_noise(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    rounded = quantize_8bit(images)
    levels = _poisson_levels(rounded)
    return draws.poisson(rounded * levels, generator) / levels - rounded


def poisson_noise(
    images: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Shot noise of the 8-bit-rounded image times per-sample ``scale``; ``gray`` samples use the luma's noise."""
    colour = _shot_noise(images, generator)
    shared = _shot_noise(to_gray(images), generator).expand_as(colour)
    noise = torch.where(gray.view(-1, 1, 1, 1), shared, colour)
    return noise * scale.to(images).view(-1, 1, 1, 1)


def usm_sharpen(images: torch.Tensor, weight: float = 0.5, radius: int = 50, threshold: float = 10.0) -> torch.Tensor:
    """Unsharp masking: ``I + weight * (I - G*I)`` blended in where the residual exceeds ``threshold`` (0-255 scale).

    ``G`` is a Gaussian of size ``radius`` (made odd) with OpenCV's default sigma; the blend mask is the
    thresholded residual blurred by ``G``.
    """
    kernel = gaussian_kernel_1d(radius + 1 - radius % 2)
    residual = images - separable_filter(images, kernel)
    mask = separable_filter((residual.abs() * 255.0 > threshold).to(images), kernel)
    sharp = torch.clamp(images + weight * residual, 0, 1)
    return mask * sharp + (1 - mask) * images
