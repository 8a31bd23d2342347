"""MATLAB ``imresize`` (bicubic, with antialiasing when shrinking) for one-channel images."""

import math

import numpy as np

KERNEL_WIDTH = 4.0


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB's 'bicubic'."""
    ax = np.abs(x)
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def resize_matrix(in_length: int, out_length: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """Matrix ``[out_length, in_length]`` of the 1-D resampling, borders mirrored ('symmetric')."""
    stretch = scale if scale < 1 and antialiasing else 1.0
    width = KERNEL_WIDTH / stretch
    # Output pixel centres mapped back to 1-based input coordinates (MATLAB's convention).
    centres = np.arange(1, out_length + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(centres - width / 2.0)
    taps = math.ceil(width) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    weights = stretch * cubic((centres[:, None] - indices) * stretch)
    weights /= weights.sum(axis=1, keepdims=True)
    # 1-based -> 0-based, then mirror indices that fall outside the image.
    zero_based = indices.astype(np.int64) - 1
    period = 2 * in_length
    folded = np.mod(zero_based, period)
    folded = np.where(folded >= in_length, period - 1 - folded, folded)
    matrix = np.zeros((out_length, in_length))
    np.add.at(matrix, (np.repeat(np.arange(out_length), taps), folded.ravel()), weights.ravel())
    return matrix


def imresize(img: np.ndarray, scale: float, antialiasing: bool = True) -> np.ndarray:
    """Resize a 2-D float image by ``scale``; output size ``ceil(size * scale)``, no rounding."""
    if img.ndim != 2:
        raise ValueError(f"imresize expects a 2-D image, got shape {img.shape}")
    h, w = img.shape
    rows = resize_matrix(h, math.ceil(h * scale), scale, antialiasing)
    cols = resize_matrix(w, math.ceil(w * scale), scale, antialiasing)
    return rows @ img @ cols.T
