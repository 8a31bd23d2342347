"""The steps teacher and student training share: VAE latents in and out, tagger embeddings, ControlNet-guided
epsilon."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..tagging import Tagger


def module_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def check_pair(hr: torch.Tensor, lr: torch.Tensor) -> None:
    """Training conditions on the LR resized to the HR size; refuse anything else with a clear message."""
    if hr.shape != lr.shape:
        raise ValueError(f"hr and lr must have the same shape (resize the LR to the HR size), got "
                         f"{tuple(hr.shape)} and {tuple(lr.shape)}")


def encode_images(vae: nn.Module, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Scaled float32 VAE latents of ``[0, 1]`` images, sampled from the posterior."""
    posterior = vae.encode((images * 2 - 1).to(module_dtype(vae))).latent_dist
    return posterior.sample(generator).float() * vae.config.scaling_factor


def decode_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` images of scaled latents (clamped, differentiable)."""
    decoded = vae.decode((latents / vae.config.scaling_factor).to(module_dtype(vae))).sample
    return (decoded.float().clamp(-1, 1) + 1) / 2


@torch.no_grad()
def tagger_embeddings(tagger: Tagger | None, images: torch.Tensor, low: float = 0.0) -> torch.Tensor | None:
    """Tagger embeddings of images in ``[low, 1]`` after a bicubic resize to the tagger's size, as the released
    training does; None without a tagger."""
    if tagger is None:
        return None
    size = (tagger.input_size, tagger.input_size)
    return tagger.embeddings(F.interpolate(images.float(), size=size, mode="bicubic").clamp(low, 1))


def predict_noise(
    unet: nn.Module,
    controlnet: nn.Module,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    text_embeddings: torch.Tensor,
    condition: torch.Tensor,
    image_embeddings: torch.Tensor | None,
) -> torch.Tensor:
    """Epsilon of a ControlNet-guided U-Net at per-sample timesteps, in the latents' dtype."""
    dtype = module_dtype(unet)
    text_embeddings = text_embeddings.to(dtype)
    image_kwargs = {} if image_embeddings is None else {"image_encoder_hidden_states": image_embeddings.to(dtype)}
    down_residuals, mid_residual = controlnet(
        latents.to(dtype), timesteps, encoder_hidden_states=text_embeddings,
        controlnet_cond=condition.to(dtype), return_dict=False, **image_kwargs,
    )[:2]
    noise = unet(
        latents.to(dtype), timesteps, encoder_hidden_states=text_embeddings,
        down_block_additional_residuals=down_residuals, mid_block_additional_residual=mid_residual,
        return_dict=False, **image_kwargs,
    )[0]
    return noise.to(latents.dtype)
