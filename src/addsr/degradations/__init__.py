"""Synthetic degradations: Real-ESRGAN's second-order pipeline for training and the paper's fixed test sets."""

from .config import BlurKernelConfig, DegradationStageConfig, RealESRGANDegradationConfig
from .folder import DEGRADATION_KINDS, DegradeFolderError, degrade_folder
from .jpeg import jpeg_compress, pil_jpeg
from .paper import PAPER_DEGRADATIONS, paper_degradation
from .realesrgan import RealESRGANDegradation

__all__ = [
    "BlurKernelConfig",
    "DEGRADATION_KINDS",
    "DegradationStageConfig",
    "DegradeFolderError",
    "PAPER_DEGRADATIONS",
    "RealESRGANDegradation",
    "RealESRGANDegradationConfig",
    "degrade_folder",
    "jpeg_compress",
    "paper_degradation",
    "pil_jpeg",
]
