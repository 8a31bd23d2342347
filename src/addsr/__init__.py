"""addsr: AddSR fast diffusion-based blind image super-resolution."""

from .colorfix import ColorFix, adain_color_fix, color_fix, wavelet_color_fix
from .diffusion import STUDENT_TIMESTEPS, NoiseSchedule, student_timesteps
from .model_folder import DEFAULT_MODEL_DIR
from .pipeline import AddSRPipeline, AddSRPipelineOutput

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL_DIR",
    "AddSRPipeline",
    "AddSRPipelineOutput",
    "ColorFix",
    "NoiseSchedule",
    "STUDENT_TIMESTEPS",
    "adain_color_fix",
    "color_fix",
    "student_timesteps",
    "wavelet_color_fix",
]
