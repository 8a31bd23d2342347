"""Luma (Y) channel of RGB images, as used by the SR metrics."""

import numpy as np

# Luma weights for RGB on a [0, 1] scale, and the offset on the [0, 255] scale.
# "ycbcr": ITU-R BT.601 as MATLAB's rgb2ycbcr (basicsr's default): Y in [16, 235].
# "yiq": the NTSC luma (pyiqa's default colour space): Y in [0, 255].
LUMA_WEIGHTS: dict[str, tuple[tuple[float, float, float], float]] = {
    "ycbcr": ((65.481, 128.553, 24.966), 16.0),
    "yiq": ((0.299 * 255.0, 0.587 * 255.0, 0.114 * 255.0), 0.0),
}


def rgb_to_y(rgb: np.ndarray, color_space: str = "ycbcr") -> np.ndarray:
    """Y channel ``[H, W]`` (float64, 0-255 scale, not rounded) of an RGB image ``[H, W, 3]`` on 0-255."""
    if color_space not in LUMA_WEIGHTS:
        raise ValueError(f"color_space must be one of {sorted(LUMA_WEIGHTS)}, got {color_space!r}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects an RGB image [H, W, 3], got shape {rgb.shape}")
    weights, offset = LUMA_WEIGHTS[color_space]
    return rgb.astype(np.float64) / 255.0 @ np.asarray(weights) + offset
