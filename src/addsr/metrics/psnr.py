"""Peak signal-to-noise ratio, as basicsr's ``calculate_psnr``."""

import numpy as np

from .image import Image, prepare_pair


def psnr(
    img1: Image,
    img2: Image,
    crop_border: int = 4,
    test_y_channel: bool = True,
    color_space: str = "ycbcr",
) -> float:
    """PSNR in dB on the 0-255 scale; ``inf`` for identical images.

    ``crop_border`` pixels are dropped on each side (4 for x4 SR). With ``test_y_channel`` an RGB
    image is measured on its (unrounded) Y channel, see :func:`addsr.metrics.color.rgb_to_y`.
    Inputs follow :mod:`addsr.metrics.image`.
    """
    a, b = prepare_pair(img1, img2, crop_border, test_y_channel, color_space)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))
