"""The Real-ESRGAN second-order degradation, batched in torch on the images' device."""

from __future__ import annotations

import torch

from .. import draws
from . import ops
from .config import RESIZE_MODES, DegradationStageConfig, RealESRGANDegradationConfig
from .jpeg import jpeg_compress
from .kernels import pulse_kernels, random_blur_kernels, random_final_sinc_kernels


class RealESRGANDegradation:
    """Turn HR images into LR images with two rounds of random blur, resize, noise and JPEG, then a final sinc.

    Drawn per sample: blur kernels (type, size, parameters, sinc or not), whether the second blur happens, noise
    type, strength and gray/colour, JPEG qualities, final sinc. Drawn per call, for the whole batch, as the
    reference does: resize factors and modes, and whether JPEG comes before or after the final resize + sinc.
    With one image per call (as the released data script ran) everything is per image.
    """

    def __init__(self, config: RealESRGANDegradationConfig | None = None):
        self.config = config if config is not None else RealESRGANDegradationConfig()

    @torch.no_grad()
    def __call__(
        self, hr: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Degrade ``hr`` (``[B, 3, H, W]`` in ``[0, 1]``, H and W multiples of ``scale``).

        Returns ``(lr, target)``: ``lr`` is ``[B, 3, H/scale, W/scale]`` rounded to 8-bit levels, ``target`` the HR
        the LR was made from (USM-sharpened when ``config.sharpen_target``). All random draws come from
        ``generator``, so the same seed gives the same output.
        """
        config = self.config
        self._check_input(hr)
        batch, _, height, width = hr.shape
        device = hr.device
        kernel1 = self._blur_kernels(config.first, batch, generator, device)
        kernel2 = self._blur_kernels(config.second, batch, generator, device)
        final_sinc = random_final_sinc_kernels(
            config.final_sinc_prob,
            config.final_sinc_sizes,
            config.final_sinc_cutoff_range,
            batch,
            config.kernel_pad_size,
            generator,
            device,
        )

        target = hr.float()
        if config.sharpen_target:
            target = ops.usm_sharpen(target, config.usm_weight, config.usm_radius, config.usm_threshold)

        out = ops.filter2d(target, kernel1)
        factor = self._resize_factor(config.first, generator)
        mode = draws.choice(RESIZE_MODES, None, generator)
        out = ops.resize(out, (int(height * factor), int(width * factor)), mode)
        out = self._add_noise(out, config.first, generator)
        out = jpeg_compress(out, draws.uniform(*config.first.jpeg_range, batch, generator, device))

        out = ops.filter2d(out, kernel2)
        factor = self._resize_factor(config.second, generator)
        lr_size = (height // config.scale, width // config.scale)
        mode = draws.choice(RESIZE_MODES, None, generator)
        out = ops.resize(out, (int(lr_size[0] * factor), int(lr_size[1] * factor)), mode)
        out = self._add_noise(out, config.second, generator)

        jpeg_first = draws.bernoulli(0.5, 1, generator).item()
        quality = draws.uniform(*config.second.jpeg_range, batch, generator, device)
        mode = draws.choice(RESIZE_MODES, None, generator)
        if jpeg_first:
            out = jpeg_compress(out, quality)
        out = ops.filter2d(ops.resize(out, lr_size, mode), final_sinc)
        if not jpeg_first:
            out = jpeg_compress(out, quality)
        return ops.quantize_8bit(out), target

    def _check_input(self, hr: torch.Tensor) -> None:
        scale = self.config.scale
        if hr.ndim != 4 or hr.shape[1] != 3:
            raise ValueError(f"Expected HR images as a [B, 3, H, W] tensor, got shape {tuple(hr.shape)}")
        if hr.shape[-2] % scale or hr.shape[-1] % scale or min(hr.shape[-2:]) < scale:
            raise ValueError(
                f"HR size {tuple(hr.shape[-2:])} must be a positive multiple of the scale {scale}; crop it first"
            )

    def _blur_kernels(
        self, stage: DegradationStageConfig, batch: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        """Per sample a random kernel with probability ``stage.blur_prob``, otherwise the identity."""
        pad_to = self.config.kernel_pad_size
        kernels = random_blur_kernels(stage.kernel, batch, pad_to, generator, device)
        blur = draws.bernoulli(stage.blur_prob, batch, generator, device).view(-1, 1, 1)
        return torch.where(blur, kernels, pulse_kernels(batch, pad_to, device))

    @staticmethod
    def _resize_factor(stage: DegradationStageConfig, generator: torch.Generator | None) -> float:
        direction = draws.choice(("up", "down", "keep"), stage.resize_probs, generator)
        if direction == "up":
            return draws.uniform(1.0, stage.resize_range[1], 1, generator).item()
        if direction == "down":
            return draws.uniform(stage.resize_range[0], 1.0, 1, generator).item()
        return 1.0

    @staticmethod
    def _add_noise(
        images: torch.Tensor, stage: DegradationStageConfig, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Per sample Gaussian (``gaussian_noise_prob``) or Poisson noise, gray with ``gray_noise_prob``; clamped."""
        batch, device = images.shape[0], images.device
        use_gaussian = draws.bernoulli(stage.gaussian_noise_prob, batch, generator, device).view(-1, 1, 1, 1)
        sigma = draws.uniform(*stage.noise_range, batch, generator, device)
        scale = draws.uniform(*stage.poisson_scale_range, batch, generator, device)
        gray = draws.bernoulli(stage.gray_noise_prob, batch, generator, device)
        noise = torch.where(
            use_gaussian,
            ops.gaussian_noise(images, sigma, gray, generator),
            ops.poisson_noise(images, scale, gray, generator),
        )
        return torch.clamp(images + noise, 0, 1)
