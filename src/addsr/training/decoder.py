"""Distilling a small decoder from a model's VAE decoder, for the PSR conditions (``addsr train decoder``).

The small decoder is diffusers' ``AutoencoderTiny`` (TAESD's architecture); only its decoder is trained and used.
The VAE, frozen, encodes random HR crops into scaled latents (posterior samples) and decodes them; the small
decoder learns to reproduce that decode from the same latents (L1 plus L1 of the image gradients, the loss of
``addsr train vae``). Its scaling factor is 1: it reads the scaled latents the sampler predicts, so
``AddSRPipeline.use_psr_decoder`` can decode PSR conditions with it. The loop is the shared one
(:mod:`addsr.training.runner`: accelerate, checkpoints, resuming).

Output: ``output_dir/checkpoints/step-*/decoder/`` (with the state to resume from), ``output_dir/decoder/`` (the
final ``AutoencoderTiny`` folder; its encoder half is left as initialised), ``output_dir/config.yaml`` and
``output_dir/metrics.json``: PSNR of its decodes against the VAE's on the validation images (their posterior means)
and the seconds one decode of each takes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate.utils import set_seed
from diffusers import AutoencoderKL, AutoencoderTiny

from ..denoiser import decode_latents, encode_images, latent_factor
from ..io import find_images, load_image, pil_to_tensor, save_text, tensor_to_uint8
from ..metrics.psnr import psnr
from .config import CropConfig, OptimizationConfig
from .runner import TrainingRun
from .vae import AutoencoderOutputConfig, autoencoder_optimization, image_gradients, save_vae, train_autoencoder

TAESD_CHANNELS = 64
"""Channels of every block of the small decoder, as in TAESD."""


@dataclass
class DecoderModelConfig:
    """The VAE to imitate and the small decoder's shape."""

    vae: str | None = None
    """The model's ``vae/`` folder (a diffusers ``AutoencoderKL``), e.g. ``src/addsr/default_model/vae``."""
    channels: int = TAESD_CHANNELS
    blocks_per_level: int = 3
    """Residual blocks at every resolution but the last (TAESD: 3; the last has 1)."""
    init: str | None = None
    """A small decoder folder to continue from (its shape wins over the fields above)."""

    def __post_init__(self) -> None:
        if self.channels <= 0 or self.blocks_per_level <= 0:
            raise ValueError(f"channels and blocks_per_level must be positive, got {self.channels}, "
                             f"{self.blocks_per_level}")

    def build(self, vae: AutoencoderKL) -> AutoencoderTiny:
        """The small decoder for ``vae``'s latents: as many 2x upsamplings as the VAE, scaling factor 1."""
        if self.init is not None:
            return AutoencoderTiny.from_pretrained(self.init)
        levels = int(np.log2(latent_factor(vae))) + 1
        blocks = (self.blocks_per_level,) * (levels - 1) + (1,)
        return AutoencoderTiny(
            encoder_block_out_channels=(self.channels,) * levels, decoder_block_out_channels=(self.channels,) * levels,
            num_encoder_blocks=(1,) + blocks[:-1], num_decoder_blocks=blocks,
            latent_channels=vae.config.latent_channels, scaling_factor=1.0,
        )


@dataclass
class DecoderLossConfig:
    gradient_weight: float = 1.0
    """L1 of the horizontal and vertical finite differences (edges), beside the L1 of the image."""

    def __post_init__(self) -> None:
        if self.gradient_weight < 0:
            raise ValueError(f"gradient_weight must be at least 0, got {self.gradient_weight}")


@dataclass
class DecoderTrainingConfig:
    """A small decoder distilled from a VAE's decoder (``addsr train decoder CONFIG``)."""

    model: DecoderModelConfig = field(default_factory=DecoderModelConfig)
    data: CropConfig = field(default_factory=lambda: CropConfig(crop_size=256, num_workers=1))
    loss: DecoderLossConfig = field(default_factory=DecoderLossConfig)
    optimization: OptimizationConfig = field(default_factory=lambda: autoencoder_optimization(2e-4, 20_000))
    output: AutoencoderOutputConfig = field(default_factory=lambda: AutoencoderOutputConfig(
        output_dir="runs/psr-decoder", checkpoint_every=2000, log_every=100))
    """``validation_images``: where ``metrics.json`` compares the small decoder with the VAE's."""


def decoder_loss(
    vae: AutoencoderKL, decoder: AutoencoderTiny, images: torch.Tensor, config: DecoderLossConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The loss terms and their weighted ``total`` for ``[-1, 1]`` images: the small decoder against the VAE's
    decode of the same posterior sample."""
    with torch.no_grad():
        latents = encode_images(vae, (images + 1) / 2, generator)
        target = decode_latents(vae, latents) * 2 - 1
    output = decoder.decode(latents).sample
    l1 = F.l1_loss(output, target)
    gradient = sum(F.l1_loss(ours, theirs) for ours, theirs in zip(image_gradients(output), image_gradients(target)))
    return {"total": l1 + config.gradient_weight * gradient, "l1": l1, "gradient": gradient}


class DecoderWithLoss(nn.Module):
    """The trained small decoder beside the frozen VAE, with :func:`decoder_loss` as ``forward`` (so that
    accelerate's wrapper sees the pass); saves as the small decoder."""

    def __init__(self, vae: AutoencoderKL, decoder: AutoencoderTiny, config: DecoderLossConfig):
        super().__init__()
        self.vae, self.decoder, self.config = vae.eval().requires_grad_(False), decoder, config

    def train(self, mode: bool = True) -> "DecoderWithLoss":
        self.decoder.train(mode)
        return self

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return decoder_loss(self.vae, self.decoder, images, self.config, generator)

    def save_pretrained(self, folder: str | Path) -> None:
        self.decoder.save_pretrained(folder)


@torch.no_grad()
def compare_decoders(vae: AutoencoderKL, decoder: AutoencoderTiny, paths: list[Path]) -> dict[str, object]:
    """PSNR (dB, Y channel) of the small decoder's decode of each image's posterior mean against the VAE's, and the
    mean seconds of one decode of each (whole images, as loaded)."""
    device = next(vae.parameters()).device
    scores, seconds = {}, {"vae": [], "decoder": []}
    factor = latent_factor(vae)
    for path in paths:
        image = pil_to_tensor(load_image(path)).to(device)
        image = image[..., : image.shape[-2] // factor * factor, : image.shape[-1] // factor * factor]
        latents = vae.encode(image * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
        decodes = {}
        for name, model in (("vae", vae), ("decoder", decoder)):
            start = time.perf_counter()
            decodes[name] = decode_latents(model, latents)
            seconds[name].append(time.perf_counter() - start)
        scores[str(path)] = psnr(*(tensor_to_uint8(decodes[name])[0] for name in ("decoder", "vae")), crop_border=0)
    return {"psnr_y_against_vae_mean": float(np.mean(list(scores.values()))), "psnr_y_against_vae": scores,
            "seconds_per_decode": {name: float(np.mean(values)) for name, values in seconds.items()}}


def train_decoder(config: DecoderTrainingConfig) -> Path:
    """Distil the small decoder as ``config`` says (resuming where a killed run stopped); return its folder
    ``output_dir/decoder``. Run plainly (one process) or under ``accelerate launch``."""
    if config.model.vae is None:
        raise ValueError("model.vae: set the folder of the VAE whose decoder to imitate (a model's vae/)")
    set_seed(config.optimization.seed)  # the random initial decoder, the same in every process
    vae = AutoencoderKL.from_pretrained(config.model.vae)
    decoder = config.model.build(vae)
    if latent_factor(decoder) != latent_factor(vae):
        raise ValueError(f"model.init upsamples x{latent_factor(decoder)}, the VAE x{latent_factor(vae)}")
    decoder.encoder.requires_grad_(False)
    return train_autoencoder(config, "decoder", DecoderWithLoss(vae, decoder, config.loss), decoder,
                             lambda run, folder, seconds: _finish(config, vae, decoder.eval(), run, folder, seconds))


def _finish(config: DecoderTrainingConfig, vae: AutoencoderKL, decoder: AutoencoderTiny, run: TrainingRun,
            folder: Path, seconds: float) -> None:
    """Write the small decoder and its metrics against the VAE."""
    save_vae(decoder, folder)
    paths = find_images(config.output.validation_images) if config.output.validation_images else []
    metrics = {
        "steps": config.optimization.max_steps, "train_seconds": round(seconds, 1), "device": str(run.device),
        "threads": torch.get_num_threads(), "vae": config.model.vae,
        "parameters": sum(p.numel() for p in decoder.decoder.parameters()),
        "vae_decoder_parameters": sum(p.numel() for p in vae.decoder.parameters()),
        **(compare_decoders(vae, decoder, paths) if paths else {}),
    }
    save_text(json.dumps(metrics, indent=2), Path(config.output.output_dir) / "metrics.json")
