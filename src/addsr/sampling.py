"""How AddSR samples: the settings of one run of the few-step PSR sampler, as one frozen object validated once, that
the command line, the web page, the evaluation and the training's validation all build."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .colorfix import COLOR_FIXES, ColorFix, check_wavelet_levels
from .diffusion import student_timesteps
from .tiling import check_tiling

DEFAULT_ADDED_PROMPT = "clean, high-resolution, 8k, extremely detailed, best quality, sharp"
DEFAULT_NEGATIVE_PROMPT = "dotted, noise, blur, lowres, smooth"
START_POINTS = ("lr", "noise")


class SettingError(ValueError):
    """A sampler setting out of range; ``name`` is the field, so that a front end can name its own option."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler's settings; defaults are the released inference's."""

    num_steps: int = 4
    """Student steps, 1 to 4: the first ``num_steps`` of the timesteps 999, 749, 499, 249."""
    timesteps: tuple[int, ...] | None = None
    """Decreasing timesteps to run instead (``num_steps`` is then unused)."""
    psr_weight: float = 0.4
    """Prediction-based Self-Refinement: the next step's condition is ``w * estimate + (1 - w) * LR``; 0 turns it
    off, 1 is the paper's pure replacement."""
    start_point: Literal["lr", "noise"] = "lr"
    """``lr``: the noised latent of the LR condition; ``noise``: pure Gaussian noise."""
    color_fix: Literal["adain", "wavelet", "none"] | None = None
    """``adain``, ``wavelet`` or ``none``; None: the model's own (``AddSRPipeline.default_color_fix``)."""
    wavelet_levels: int | None = None
    """Levels of the wavelet fix; None: the model's own."""
    guidance_scale: float = 0.0
    """Classifier-free guidance with the negative prompt; off at 1 or below."""
    prompt: str | tuple[str, ...] = ""
    """Words added to the tags: one for every image, or one per image of a batch."""
    added_prompt: str = DEFAULT_ADDED_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    upscale: int = 4
    process_size: int = 512
    """The condition's short side is at least ``process_size`` (LR inputs are enlarged to ``process_size /
    upscale`` first)."""
    conditioning_scale: float = 1.0
    """Scale of the ControlNet's residuals."""
    tile: int | Literal["auto"] = "auto"
    """Tile side in LR input pixels: ``"auto"`` (chosen for the device) or 0 (the whole image at once)."""
    tile_overlap: int | None = None
    """Overlap of neighbouring tiles in LR pixels; None: a quarter of the tile."""

    def __post_init__(self) -> None:
        if isinstance(self.prompt, list):
            object.__setattr__(self, "prompt", tuple(self.prompt))
        if self.timesteps is not None:
            object.__setattr__(self, "timesteps", tuple(self.timesteps))
        checks = {
            "num_steps" if self.timesteps is None else "timesteps": self._check_steps,
            "psr_weight": self._check_psr_weight,
            "start_point": self._check_start_point,
            "color_fix": self._check_color_fix,
            "wavelet_levels": self._check_wavelet_levels,
            "upscale": self._check_sizes,
            "tile": lambda: check_tiling(self.tile, None),
            "tile_overlap": lambda: check_tiling(self.tile, self.tile_overlap),
        }
        for name, check in checks.items():
            try:
                check()
            except ValueError as error:
                raise SettingError(name, str(error)) from None

    def _check_steps(self) -> None:
        steps = self.timestep_list()
        if not steps or any(t < 0 for t in steps):
            raise ValueError(f"timesteps must be a non-empty list of timesteps from 0, got {steps}")
        if any(a <= b for a, b in zip(steps, steps[1:])):
            raise ValueError(f"timesteps must decrease, got {steps}")

    def _check_psr_weight(self) -> None:
        if not 0.0 <= self.psr_weight <= 1.0:
            raise ValueError(f"psr_weight must be in [0, 1], got {self.psr_weight}")

    def _check_start_point(self) -> None:
        if self.start_point not in START_POINTS:
            raise ValueError(f"start_point must be 'lr' or 'noise', got {self.start_point!r}")

    def _check_color_fix(self) -> None:
        if self.color_fix is not None and self.color_fix not in COLOR_FIXES:
            raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")

    def _check_wavelet_levels(self) -> None:
        if self.wavelet_levels is not None:
            check_wavelet_levels(self.wavelet_levels)

    def _check_sizes(self) -> None:
        if self.upscale < 1 or self.process_size < 1:
            raise ValueError(f"upscale and process_size must be positive, got {self.upscale}, {self.process_size}")

    def timestep_list(self) -> list[int]:
        """The timesteps to run: ``timesteps``, else the first ``num_steps`` student timesteps."""
        return list(self.timesteps) if self.timesteps is not None else student_timesteps(self.num_steps)

    def final_color_fix(self, model_default: ColorFix) -> ColorFix:
        """The colour fix to apply: ``model_default`` with the fields these settings name."""
        return model_default.replace(self.color_fix, self.wavelet_levels)


DEFAULT_SAMPLER = SamplerSettings()
"""The released inference's settings."""
