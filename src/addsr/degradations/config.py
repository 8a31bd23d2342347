"""Parameters of the Real-ESRGAN second-order degradation, as in the released AddSR data script
(`utils_data/make_paired_data.py`: ``args_degradation``, ``realesrgan_degradation``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


def _check_range(name: str, values: tuple[float, float], low: float | None = None) -> None:
    if len(values) != 2 or values[0] > values[1]:
        raise ValueError(f"{name} must be a (min, max) pair with min <= max, got {values}")
    if low is not None and values[0] < low:
        raise ValueError(f"{name} must not go below {low}, got {values}")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


def _check_distribution(name: str, values: tuple[float, ...], length: int) -> None:
    if len(values) != length or any(v < 0 for v in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"{name} must be {length} non-negative probabilities summing to 1, got {values}")


@dataclass
class BlurKernelConfig:
    """Random blur kernels: six Gaussian-like types (see ``KERNEL_TYPES``) or, with ``sinc_prob``, a 2-D sinc."""

    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma_range: tuple[float, float] = (0.2, 3.0)
    rotation_range: tuple[float, float] = (-math.pi, math.pi)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1
    sinc_cutoff_range: tuple[float, float] = (math.pi / 3, math.pi)
    """Cutoff (radians) of the sinc for kernels smaller than ``sinc_large_kernel_size``."""
    sinc_cutoff_range_large: tuple[float, float] = (math.pi / 5, math.pi)
    """Cutoff of the sinc for kernels of at least ``sinc_large_kernel_size``."""
    sinc_large_kernel_size: int = 13

    def __post_init__(self) -> None:
        if not self.kernel_sizes or any(size < 1 or size % 2 == 0 for size in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd positive sizes, got {self.kernel_sizes}")
        _check_distribution("kernel_probs", self.kernel_probs, len(KERNEL_TYPES))
        _check_range("sigma_range", self.sigma_range, low=1e-3)
        _check_range("rotation_range", self.rotation_range)
        _check_range("betag_range", self.betag_range, low=1e-3)
        _check_range("betap_range", self.betap_range, low=1e-3)
        _check_probability("sinc_prob", self.sinc_prob)
        _check_range("sinc_cutoff_range", self.sinc_cutoff_range, low=1e-3)
        _check_range("sinc_cutoff_range_large", self.sinc_cutoff_range_large, low=1e-3)


@dataclass
class DegradationStageConfig:
    """One round of blur -> random resize -> noise -> JPEG."""

    kernel: BlurKernelConfig = field(default_factory=BlurKernelConfig)
    blur_prob: float = 1.0
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    """Probabilities of up, down and keep."""
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    """Otherwise Poisson noise."""
    noise_range: tuple[float, float] = (1.0, 30.0)
    """Gaussian sigma on the 0-255 scale."""
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)

    def __post_init__(self) -> None:
        _check_probability("blur_prob", self.blur_prob)
        _check_distribution("resize_probs", self.resize_probs, 3)
        _check_range("resize_range", self.resize_range, low=1e-3)
        if not self.resize_range[0] <= 1.0 <= self.resize_range[1]:
            raise ValueError(f"resize_range must contain 1 (down below, up above), got {self.resize_range}")
        _check_probability("gaussian_noise_prob", self.gaussian_noise_prob)
        _check_range("noise_range", self.noise_range, low=0.0)
        _check_range("poisson_scale_range", self.poisson_scale_range, low=0.0)
        _check_probability("gray_noise_prob", self.gray_noise_prob)
        _check_range("jpeg_range", self.jpeg_range, low=1.0)
        if self.jpeg_range[1] > 100:
            raise ValueError(f"jpeg_range must lie in [1, 100], got {self.jpeg_range}")


def _second_stage() -> DegradationStageConfig:
    return DegradationStageConfig(
        kernel=BlurKernelConfig(sigma_range=(0.2, 1.5)),
        blur_prob=0.8,
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
    )


@dataclass
class RealESRGANDegradationConfig:
    """Everything the second-order pipeline draws from; defaults are the released data script's
    (`utils_data/make_paired_data.py`)."""

    scale: int = 4
    first: DegradationStageConfig = field(default_factory=DegradationStageConfig)
    second: DegradationStageConfig = field(default_factory=_second_stage)
    final_sinc_prob: float = 0.8
    final_sinc_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    final_sinc_cutoff_range: tuple[float, float] = (math.pi / 3, math.pi)
    sharpen_target: bool = True
    """USM-sharpen the HR before degrading it and return the sharpened HR as the target."""
    usm_weight: float = 0.5
    usm_radius: int = 50
    usm_threshold: float = 10.0
    """On the 0-255 scale."""

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")
        _check_probability("final_sinc_prob", self.final_sinc_prob)
        if not self.final_sinc_sizes or any(size < 1 or size % 2 == 0 for size in self.final_sinc_sizes):
            raise ValueError(f"final_sinc_sizes must be odd positive sizes, got {self.final_sinc_sizes}")
        _check_range("final_sinc_cutoff_range", self.final_sinc_cutoff_range, low=1e-3)
        if self.usm_radius < 1:
            raise ValueError(f"usm_radius must be positive, got {self.usm_radius}")

    @property
    def kernel_pad_size(self) -> int:
        """Common size every sampled kernel is zero-padded to, so that one batched convolution applies them."""
        return max(*self.first.kernel.kernel_sizes, *self.second.kernel.kernel_sizes, *self.final_sinc_sizes)
