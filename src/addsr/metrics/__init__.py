"""Image quality metrics for super-resolution.

Built in and weight-free, with the field's usual (basicsr) definitions: :func:`psnr` and
:func:`ssim` on the Y channel with a border crop, :func:`niqe` with the standard pristine model.
Learned metrics (LPIPS, DISTS, MANIQA, MUSIQ, CLIPIQA) come through pyiqa when it and the weights
are installed locally (:func:`learned_metric`). :class:`MetricResult` records which implementation
and settings produced each number.
"""

from .color import rgb_to_y
from .learned import LEARNED_METRICS, LearnedMetric, MetricUnavailable, learned_metric
from .niqe import NiqeParams, load_niqe_params, niqe
from .psnr import psnr
from .registry import MetricSettings, MetricSuite, available_metrics, compute_metrics, is_full_reference
from .result import MetricResult
from .ssim import ssim

__all__ = [
    "LEARNED_METRICS",
    "LearnedMetric",
    "MetricResult",
    "MetricSettings",
    "MetricSuite",
    "MetricUnavailable",
    "NiqeParams",
    "available_metrics",
    "compute_metrics",
    "is_full_reference",
    "learned_metric",
    "load_niqe_params",
    "niqe",
    "psnr",
    "rgb_to_y",
    "ssim",
]
