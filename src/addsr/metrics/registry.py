"""Metrics by name: the built-in PSNR, SSIM and NIQE and the learned metrics through pyiqa."""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional, Union

from .image import Image
from .learned import LEARNED_METRICS, learned_metric
from .niqe import niqe, resolve_params_path
from .psnr import psnr
from .result import MetricResult
from .ssim import ssim

BUILTIN_METRICS = ("psnr", "ssim", "niqe")
FULL_REFERENCE_BUILTINS = ("psnr", "ssim")


@dataclass
class MetricSettings:
    """Settings of every metric a :class:`MetricSuite` computes."""

    crop_border: int = 4  # PSNR/SSIM: pixels dropped on each side (the SR scale, 4 for x4)
    test_y_channel: bool = True  # PSNR/SSIM on the Y channel of RGB images
    color_space: str = "ycbcr"  # Y of "ycbcr" (MATLAB/basicsr) or "yiq" (pyiqa's default)
    niqe_crop_border: int = 0
    niqe_block_size: int = 96
    niqe_params_path: Optional[Union[str, os.PathLike]] = None  # else $ADDSR_NIQE_PARAMS, else the shipped copy
    iqa_weights_dir: Optional[Union[str, os.PathLike]] = None  # else $ADDSR_IQA_WEIGHTS, else torch hub
    device: str = "cpu"  # learned metrics only


def available_metrics() -> tuple[str, ...]:
    return BUILTIN_METRICS + tuple(LEARNED_METRICS)


def is_full_reference(name: str) -> bool:
    """Whether ``name`` compares against a reference (HR) image."""
    if name in LEARNED_METRICS:
        return LEARNED_METRICS[name].full_reference
    if name in BUILTIN_METRICS:
        return name in FULL_REFERENCE_BUILTINS
    raise KeyError(f"unknown metric {name!r}; choose from {list(available_metrics())}")


class MetricSuite:
    """A fixed set of metrics and settings, built once (learned models included) and applied per image."""

    def __init__(self, names: Sequence[str], settings: Optional[MetricSettings] = None) -> None:
        self.settings = settings or MetricSettings()
        self.names = list(names)
        self._metrics = {name: self._build(name) for name in self.names}

    @property
    def needs_reference(self) -> bool:
        return any(is_full_reference(name) for name in self.names)

    def _build(self, name: str) -> Callable[[Image, Optional[Image]], MetricResult]:
        if name in LEARNED_METRICS:
            return learned_metric(name, self.settings.iqa_weights_dir, self.settings.device)
        if name == "psnr":
            return self._full_reference("psnr", psnr)
        if name == "ssim":
            return self._full_reference("ssim", ssim)
        if name == "niqe":
            return self._niqe()
        raise KeyError(f"unknown metric {name!r}; choose from {list(available_metrics())}")

    def _full_reference(self, name: str, fn: Callable[..., float]) -> Callable[[Image, Optional[Image]], MetricResult]:
        s = self.settings
        settings = {"crop_border": s.crop_border, "test_y_channel": s.test_y_channel, "color_space": s.color_space}

        def compute(img: Image, ref: Optional[Image]) -> MetricResult:
            if ref is None:
                raise ValueError(f"{name} is a full-reference metric: pass the reference (HR) image")
            value = fn(img, ref, s.crop_border, s.test_y_channel, s.color_space)
            return MetricResult(name, value, f"addsr.metrics.{name} (basicsr definition)", dict(settings))

        return compute

    def _niqe(self) -> Callable[[Image, Optional[Image]], MetricResult]:
        s = self.settings
        params = str(resolve_params_path(s.niqe_params_path))
        settings = {
            "crop_border": s.niqe_crop_border,
            "block_size": s.niqe_block_size,
            "color_space": s.color_space,
            "params": params,
        }

        def compute(img: Image, ref: Optional[Image] = None) -> MetricResult:
            value = niqe(img, s.niqe_crop_border, params, s.niqe_block_size, s.color_space)
            return MetricResult("niqe", value, "addsr.metrics.niqe (basicsr definition)", dict(settings))

        return compute

    def __call__(self, img: Image, ref: Optional[Image] = None) -> list[MetricResult]:
        """One result per metric, in the order the names were given."""
        return [self._metrics[name](img, ref) for name in self.names]


def compute_metrics(
    names: Sequence[str], sr: Image, hr: Optional[Image] = None, settings: Optional[MetricSettings] = None
) -> list[MetricResult]:
    """Score one super-resolved image; ``hr`` is needed by full-reference metrics (see :class:`MetricSuite`)."""
    return MetricSuite(names, settings)(sr, hr)
