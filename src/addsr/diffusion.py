"""Diffusion math shared by inference and training: the DDPM noise schedule, x0 from epsilon, re-noising."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler

STUDENT_TIMESTEPS: tuple[int, ...] = (999, 749, 499, 249)
"""The AddSR student's timesteps; N-step inference takes the first N."""

SD2_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
"""Stable Diffusion 2 base's DDPM schedule (``stabilityai/stable-diffusion-2-base``'s ``scheduler/``, which the
released ``test_addsr.py`` loads)."""


def student_timesteps(num_steps: int) -> list[int]:
    """The first ``num_steps`` of the student timesteps (999, 749, 499, 249)."""
    if not 1 <= num_steps <= len(STUDENT_TIMESTEPS):
        raise ValueError(f"num_steps must be between 1 and {len(STUDENT_TIMESTEPS)}, got {num_steps}")
    return list(STUDENT_TIMESTEPS[:num_steps])


def _per_sample(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Shape ``[B]`` (or scalar) coefficients to broadcast against ``like`` and match its dtype."""
    coefficient = coefficient.to(device=like.device, dtype=like.dtype).flatten()
    return coefficient.view(-1, *([1] * (like.ndim - 1)))


@dataclass
class NoiseSchedule:
    """Cumulative products of alphas of a DDPM schedule, with the two formulas AddSR needs."""

    alphas_cumprod: torch.Tensor
    config: dict[str, Any]

    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None) -> NoiseSchedule:
        """Build from a DDPM scheduler config (a dict); Stable Diffusion 2's schedule by default."""
        scheduler = DDPMScheduler.from_config(config or SD2_SCHEDULER_CONFIG)
        prediction_type = scheduler.config.prediction_type
        if prediction_type != "epsilon":
            raise ValueError(f"AddSR needs an epsilon-prediction schedule, this config predicts {prediction_type!r}")
        return cls(scheduler.alphas_cumprod.to(torch.float32), dict(scheduler.config))

    @classmethod
    def from_pretrained(cls, scheduler_dir: str | Path) -> NoiseSchedule:
        """Build from a diffusers ``scheduler/`` folder."""
        return cls.from_config(dict(DDPMScheduler.load_config(scheduler_dir)))

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def _coefficients(self, timesteps: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        timesteps = torch.as_tensor(timesteps, device=self.alphas_cumprod.device).long()
        alpha_bar = self.alphas_cumprod[timesteps]
        return _per_sample(alpha_bar.sqrt(), like), _per_sample((1 - alpha_bar).sqrt(), like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``."""
        sqrt_alpha_bar, sqrt_one_minus = self._coefficients(timesteps, x0)
        return sqrt_alpha_bar * x0 + sqrt_one_minus * noise

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor | int) -> torch.Tensor:
        """``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (AddSR paper, Eq. 2)."""
        sqrt_alpha_bar, sqrt_one_minus = self._coefficients(timesteps, x_t)
        return (x_t - sqrt_one_minus * eps) / sqrt_alpha_bar
