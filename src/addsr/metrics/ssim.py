"""Structural similarity, as basicsr's ``calculate_ssim`` (Wang et al. 2004, MATLAB reference)."""

import numpy as np
from scipy.ndimage import correlate1d

from .image import Image, prepare_pair

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
C1 = (0.01 * 255.0) ** 2
C2 = (0.03 * 255.0) ** 2


def gaussian_kernel_1d(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps; the SSIM window is their outer product."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-(x**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable Gaussian filtering keeping only the positions where the window fits ('valid')."""
    half = len(taps) // 2
    out = correlate1d(correlate1d(img, taps, axis=0), taps, axis=1)
    return out[half:-half, half:-half]


def ssim_map(img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
    """SSIM index at every 'valid' window position of two single-channel images on 0-255."""
    if min(img1.shape) < WINDOW_SIZE:
        raise ValueError(f"SSIM needs images of at least {WINDOW_SIZE}x{WINDOW_SIZE} after cropping, got {img1.shape}")
    taps = gaussian_kernel_1d()
    mu1, mu2 = _filter_valid(img1, taps), _filter_valid(img2, taps)
    var1 = _filter_valid(img1 * img1, taps) - mu1**2
    var2 = _filter_valid(img2 * img2, taps) - mu2**2
    cov = _filter_valid(img1 * img2, taps) - mu1 * mu2
    luminance = (2.0 * mu1 * mu2 + C1) / (mu1**2 + mu2**2 + C1)
    structure = (2.0 * cov + C2) / (var1 + var2 + C2)
    return luminance * structure


def ssim(
    img1: Image,
    img2: Image,
    crop_border: int = 4,
    test_y_channel: bool = True,
    color_space: str = "ycbcr",
) -> float:
    """Mean SSIM (11x11 Gaussian window, sigma 1.5, 'valid' positions, constants for range 255).

    Crop and Y channel as :func:`addsr.metrics.psnr.psnr`; without the Y channel an RGB image
    scores the mean of its per-channel SSIMs.
    """
    a, b = prepare_pair(img1, img2, crop_border, test_y_channel, color_space)
    if a.ndim == 2:
        return float(ssim_map(a, b).mean())
    return float(np.mean([ssim_map(a[..., c], b[..., c]).mean() for c in range(a.shape[2])]))
