"""Blur kernels of the Real-ESRGAN degradation, built for a whole batch at once.

Each sample gets its own kernel type, size and shape parameters. A kernel of size ``k`` is computed on the centred
``k x k`` window of a common ``pad_to x pad_to`` grid and is zero outside it, so a batch of kernels of different
sizes is one ``[B, pad_to, pad_to]`` tensor.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import draws
from .config import KERNEL_TYPES, BlurKernelConfig


def _grid(pad_to: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Column (x) and row (y) offsets from the centre of a ``pad_to x pad_to`` grid."""
    axis = torch.arange(pad_to, dtype=torch.float64, device=device) - (pad_to - 1) / 2
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return x, y


def _window_mask(sizes: torch.Tensor, pad_to: int) -> torch.Tensor:
    """``[B, pad_to, pad_to]`` mask of the centred ``size x size`` window of each sample."""
    x, y = _grid(pad_to, sizes.device)
    half = (sizes.to(torch.float64) // 2).view(-1, 1, 1)
    return (x.abs() <= half) & (y.abs() <= half)


def _normalise(kernels: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    kernels = kernels * _window_mask(sizes, kernels.shape[-1])
    return (kernels / kernels.sum(dim=(-2, -1), keepdim=True)).float()


def gaussian_like_kernels(
    kernel_type: torch.Tensor,
    sigma_x: torch.Tensor,
    sigma_y: torch.Tensor,
    rotation: torch.Tensor,
    beta: torch.Tensor,
    sizes: torch.Tensor,
    pad_to: int,
) -> torch.Tensor:
    """Kernels of the six ``KERNEL_TYPES`` (indices into it), normalised to sum 1.

    With ``q = u^2 / sigma_x^2 + v^2 / sigma_y^2`` for offsets ``(u, v)`` rotated by ``rotation``: Gaussian
    ``exp(-q / 2)``, generalised Gaussian ``exp(-q^beta / 2)``, plateau ``1 / (1 + q^beta)``. Isotropic types
    use ``sigma_x`` on both axes and no rotation.
    """
    x, y = _grid(pad_to, sizes.device)
    isotropic = (kernel_type % 2 == 0).view(-1, 1, 1)
    sigma_x = sigma_x.to(torch.float64).view(-1, 1, 1)
    sigma_y = torch.where(isotropic, sigma_x, sigma_y.to(torch.float64).view(-1, 1, 1))
    rotation = torch.where(isotropic, torch.zeros_like(sigma_x), rotation.to(torch.float64).view(-1, 1, 1))
    u = torch.cos(rotation) * x + torch.sin(rotation) * y
    v = -torch.sin(rotation) * x + torch.cos(rotation) * y
    q = (u / sigma_x) ** 2 + (v / sigma_y) ** 2
    q_beta = q ** beta.to(torch.float64).view(-1, 1, 1)
    family = (kernel_type // 2).view(-1, 1, 1)  # 0 Gaussian, 1 generalised Gaussian, 2 plateau
    kernels = torch.where(family == 0, torch.exp(-0.5 * q), torch.exp(-0.5 * q_beta))
    kernels = torch.where(family == 2, 1.0 / (1.0 + q_beta), kernels)
    return _normalise(kernels, sizes)


def sinc_kernels(cutoff: torch.Tensor, sizes: torch.Tensor, pad_to: int) -> torch.Tensor:
    """Circularly symmetric low-pass (2-D sinc, ``cutoff * J1(cutoff r) / (2 pi r)``) kernels, normalised to sum 1."""
    x, y = _grid(pad_to, sizes.device)
    radius = torch.sqrt(x**2 + y**2)
    cutoff = cutoff.to(torch.float64).view(-1, 1, 1)
    safe_radius = torch.where(radius > 0, radius, torch.ones_like(radius))
    kernels = cutoff * torch.special.bessel_j1(cutoff * safe_radius) / (2 * math.pi * safe_radius)
    kernels = torch.where(radius > 0, kernels, cutoff**2 / (4 * math.pi))
    return _normalise(kernels, sizes)


def pulse_kernels(count: int, pad_to: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Identity kernels (a single 1 in the centre)."""
    kernels = torch.zeros(count, pad_to, pad_to, device=device)
    kernels[:, pad_to // 2, pad_to // 2] = 1.0
    return kernels


def _split_range_beta(value_range: tuple[float, float], count: int, generator, device) -> torch.Tensor:
    """Shape parameter: with probability 1/2 uniform in ``[low, 1]``, else uniform in ``[1, high]``."""
    below = draws.uniform(value_range[0], 1.0, count, generator, device)
    above = draws.uniform(1.0, value_range[1], count, generator, device)
    return torch.where(draws.bernoulli(0.5, count, generator, device), below, above)


def _random_sizes(sizes: Sequence[int], count: int, generator, device) -> torch.Tensor:
    index = draws.categorical([1.0] * len(sizes), count, generator, device)
    return torch.tensor(sizes, device=device)[index]


def random_blur_kernels(
    config: BlurKernelConfig,
    count: int,
    pad_to: int,
    generator: torch.Generator | None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[count, pad_to, pad_to]`` kernels, each with its own size, type (or sinc) and parameters."""
    device = torch.device(device)
    sizes = _random_sizes(config.kernel_sizes, count, generator, device)
    kernel_type = draws.categorical(config.kernel_probs, count, generator, device)
    sigma_x = draws.uniform(*config.sigma_range, count, generator, device)
    sigma_y = draws.uniform(*config.sigma_range, count, generator, device)
    rotation = draws.uniform(*config.rotation_range, count, generator, device)
    generalized_beta = _split_range_beta(config.betag_range, count, generator, device)
    plateau_beta = _split_range_beta(config.betap_range, count, generator, device)
    beta = torch.where(kernel_type // 2 == 2, plateau_beta, generalized_beta)
    gaussian_like = gaussian_like_kernels(kernel_type, sigma_x, sigma_y, rotation, beta, sizes, pad_to)

    small_cutoff = draws.uniform(*config.sinc_cutoff_range, count, generator, device)
    large_cutoff = draws.uniform(*config.sinc_cutoff_range_large, count, generator, device)
    cutoff = torch.where(sizes < config.sinc_large_kernel_size, small_cutoff, large_cutoff)
    sinc = sinc_kernels(cutoff, sizes, pad_to)

    use_sinc = draws.bernoulli(config.sinc_prob, count, generator, device).view(-1, 1, 1)
    return torch.where(use_sinc, sinc, gaussian_like)


def random_final_sinc_kernels(
    probability: float,
    sizes: Sequence[int],
    cutoff_range: tuple[float, float],
    count: int,
    pad_to: int,
    generator: torch.Generator | None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per sample, with ``probability`` a sinc kernel of random size and cutoff, otherwise the identity."""
    device = torch.device(device)
    kernel_sizes = _random_sizes(sizes, count, generator, device)
    cutoff = draws.uniform(*cutoff_range, count, generator, device)
    use_sinc = draws.bernoulli(probability, count, generator, device).view(-1, 1, 1)
    return torch.where(use_sinc, sinc_kernels(cutoff, kernel_sizes, pad_to), pulse_kernels(count, pad_to, device))


def gaussian_kernel_1d(size: int, sigma: float | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian; ``sigma=None`` uses OpenCV's rule ``0.3 * ((size - 1) / 2 - 1) + 0.8``."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"Gaussian kernel size must be odd and positive, got {size}")
    sigma = 0.3 * ((size - 1) / 2 - 1) + 0.8 if sigma is None else sigma
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(axis**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).float()


__all__ = [
    "KERNEL_TYPES",
    "gaussian_kernel_1d",
    "gaussian_like_kernels",
    "pulse_kernels",
    "random_blur_kernels",
    "random_final_sinc_kernels",
    "sinc_kernels",
]
