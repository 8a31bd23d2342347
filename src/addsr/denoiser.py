"""The steps inference and training share: VAE latents in and out, tagger input and embeddings, and the
ControlNet-guided U-Net's epsilon.

``AddSRPipeline`` and the teacher and TA-ADD losses all call these functions, so the sampler and the training
objectives run the same network the same way.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from .tagging import Tagger


def module_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def latent_factor(vae: nn.Module) -> int:
    """Pixels per latent pixel along each side (8 for Stable Diffusion's VAE), of an ``AutoencoderKL`` or of the
    decoder of an ``AutoencoderTiny``."""
    config = vae.config
    if "decoder_block_out_channels" in config:
        return config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels) - 1)
    return 2 ** (len(config.block_out_channels) - 1)


def check_pair(hr: torch.Tensor, lr: torch.Tensor) -> None:
    """Training conditions on the LR resized to the HR size; refuse anything else with a clear message."""
    if hr.shape != lr.shape:
        raise ValueError(f"hr and lr must have the same shape (resize the LR to the HR size), got "
                         f"{tuple(hr.shape)} and {tuple(lr.shape)}")


def encode_moments(vae: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mean and log-variance ``[B, 2C, h, w]`` of the VAE posterior of ``[0, 1]`` images."""
    return vae.encode((images * 2 - 1).to(module_dtype(vae))).latent_dist.parameters


def sample_latents(vae: nn.Module, moments: torch.Tensor, generator: torch.Generator | list | None) -> torch.Tensor:
    """Scaled float32 latents drawn from the posterior ``moments``."""
    return DiagonalGaussianDistribution(moments).sample(generator).float() * vae.config.scaling_factor


def encode_images(vae: nn.Module, images: torch.Tensor, generator: torch.Generator | list | None) -> torch.Tensor:
    """Scaled float32 VAE latents of ``[0, 1]`` images, sampled from the posterior."""
    return sample_latents(vae, encode_moments(vae, images), generator)


def decode_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` float32 images of scaled latents (clamped, differentiable)."""
    decoded = vae.decode((latents / vae.config.scaling_factor).to(module_dtype(vae))).sample
    return (decoded.float().clamp(-1, 1) + 1) / 2


def tagger_input(
    images: torch.Tensor, size: int, mode: Literal["bilinear", "bicubic"] = "bicubic",
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Images resized to the tagger's ``size`` x ``size`` (float32, no antialiasing), optionally clamped.

    The released code resizes the LR for the first inference step bilinearly (torchvision 0.15's tensor
    ``Resize``) and every other tagger input bicubically (``F.interpolate``); training clamps to the input's range.
    """
    resized = F.interpolate(images.float(), size=(size, size), mode=mode, align_corners=False)
    return resized.clamp(*value_range) if value_range is not None else resized


@torch.no_grad()
def tagger_embeddings(tagger: Tagger | None, images: torch.Tensor, low: float = 0.0) -> torch.Tensor | None:
    """Tagger embeddings of images in ``[low, 1]`` after a bicubic resize to the tagger's size, as the released
    training does; None without a tagger."""
    if tagger is None:
        return None
    return tagger.embeddings(tagger_input(images, tagger.input_size, "bicubic", (low, 1.0)))


def predict_noise(
    unet: nn.Module,
    controlnet: nn.Module,
    latents: torch.Tensor,
    timesteps: torch.Tensor | int,
    text_embeddings: torch.Tensor,
    condition: torch.Tensor,
    image_embeddings: torch.Tensor | None,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """Epsilon of the ControlNet-guided U-Net at one timestep or per-sample timesteps, in the latents' dtype.

    ``condition`` is the ControlNet's image in ``[0, 1]`` at ``latent_factor`` times the latents' size;
    ``image_embeddings`` feed the image cross-attention (None for a model without it)."""
    dtype = module_dtype(unet)
    text_embeddings = text_embeddings.to(dtype)
    image_kwargs = {} if image_embeddings is None else {"image_encoder_hidden_states": image_embeddings.to(dtype)}
    down_residuals, mid_residual = controlnet(
        latents.to(dtype), timesteps, encoder_hidden_states=text_embeddings, controlnet_cond=condition.to(dtype),
        conditioning_scale=conditioning_scale, return_dict=False, **image_kwargs,
    )[:2]
    noise = unet(
        latents.to(dtype), timesteps, encoder_hidden_states=text_embeddings,
        down_block_additional_residuals=down_residuals, mid_block_additional_residual=mid_residual,
        return_dict=False, **image_kwargs,
    )[0]
    return noise.to(latents.dtype)
