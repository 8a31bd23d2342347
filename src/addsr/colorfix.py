"""Colour correction of the restored image against the upscaled LR condition, as the released inference does it
(NJU-PCALab/AddSR `test_addsr.py`, `--align_method adain|wavelet|nofix`, with `utils/wavelet_color_fix.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

WAVELET_LEVELS = 5
WAVELET_BAND_PIXELS = 2**19


def check_wavelet_levels(levels: int) -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"wavelet levels must be a positive integer, got {levels!r}")


def _channel_mean_std(images: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    flat = images.flatten(2)
    std = (flat.var(dim=2) + eps).sqrt()
    return flat.mean(dim=2)[..., None, None], std[..., None, None]


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Give each channel of ``image`` the mean and standard deviation of ``reference`` (AdaIN)."""
    image_mean, image_std = _channel_mean_std(image)
    reference_mean, reference_std = _channel_mean_std(reference)
    return (image - image_mean).div_(image_std).mul_(reference_std).add_(reference_mean).clamp_(0, 1)


def wavelet_blur(images: torch.Tensor, dilation: int) -> torch.Tensor:
    """A 3x3 [1, 2, 1] x [1, 2, 1] / 16 blur with the given dilation and replicate padding."""
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=images.dtype, device=images.device)
    kernel = (taps[:, None] * taps[None, :] / 16).expand(images.shape[1], 1, 3, 3)
    padded = F.pad(images, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=images.shape[1], dilation=dilation)


def wavelet_decompose(images: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Split into (high frequencies, low frequencies) with ``levels`` blurs of dilation 1, 2, 4, ..."""
    check_wavelet_levels(levels)
    high = torch.zeros_like(images)
    low = images
    for level in range(levels):
        blurred = wavelet_blur(low, 2**level)
        high.add_(low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(image: torch.Tensor, reference: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """High frequencies of ``image`` plus low frequencies (colour, shading) of ``reference``.

    Fewer ``levels`` take finer detail from ``reference``: its low band is a blur of about
    ``sqrt((4**levels - 1) / 6)`` pixels (standard deviation: 13.1 at the released 5 levels, 3.2 at 3).

    Computed in bands of about ``WAVELET_BAND_PIXELS`` pixels, each widened by the rows the blurs reach
    (``2**levels - 1``), so every band is exactly what the whole image gives there: one pass would hold a dozen
    full-size copies (a dilated depthwise convolution unfolds its input nine times), 2.4 GB at 4096 x 4096.
    """
    check_wavelet_levels(levels)
    reach = 2**levels - 1
    height, width = image.shape[-2:]
    rows = max(1, WAVELET_BAND_PIXELS // width)
    fixed = torch.empty_like(image)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        start, stop = max(0, top - reach), min(height, bottom + reach)
        band = _wavelet_color_fix(image[..., start:stop, :], reference[..., start:stop, :], levels)
        fixed[..., top:bottom, :] = band[..., top - start:bottom - start, :]
    return fixed


def _wavelet_color_fix(image: torch.Tensor, reference: torch.Tensor, levels: int) -> torch.Tensor:
    high, _ = wavelet_decompose(image, levels)
    reference_low = reference
    for level in range(levels):  # the low band alone: wavelet_decompose's, without its high band
        reference_low = wavelet_blur(reference_low, 2**level)
    return high.add_(reference_low).clamp_(0, 1)


def no_color_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Leave the image as it is."""
    return image


COLOR_FIXES: dict[str, Callable[..., torch.Tensor]] = {
    "adain": adain_color_fix,
    "wavelet": wavelet_color_fix,
    "none": no_color_fix,
}


def color_fix(
    image: torch.Tensor, reference: torch.Tensor, method: str = "adain", wavelet_levels: int = WAVELET_LEVELS
) -> torch.Tensor:
    """Apply the named colour fix to ``[B, 3, H, W]`` images in ``[0, 1]``; ``wavelet_levels`` is for ``wavelet``."""
    return ColorFix(method, wavelet_levels)(image, reference)


@dataclass(frozen=True)
class ColorFix:
    """A colour fix and its parameters, as a model's default or one call's choice."""

    method: str = "adain"
    wavelet_levels: int = WAVELET_LEVELS

    def __post_init__(self) -> None:
        if self.method not in COLOR_FIXES:
            raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {self.method!r}")
        check_wavelet_levels(self.wavelet_levels)

    def __call__(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if self.method == "wavelet":
            return wavelet_color_fix(image, reference, self.wavelet_levels)
        return COLOR_FIXES[self.method](image, reference)

    def replace(self, method: str | None = None, wavelet_levels: int | None = None) -> ColorFix:
        """This fix with the given fields changed; ``None`` keeps a field."""
        return ColorFix(self.method if method is None else method,
                        self.wavelet_levels if wavelet_levels is None else wavelet_levels)

    @property
    def settings(self) -> dict[str, Any]:
        """What decides the output: the method, and the levels for ``wavelet``."""
        levels = {"wavelet_levels": self.wavelet_levels} if self.method == "wavelet" else {}
        return {"color_fix": self.method, **levels}
