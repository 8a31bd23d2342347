"""Training a small VAE (``AutoencoderKL``) from scratch for the small AddSR, where no pretrained one exists, through
the shared training loop (:mod:`addsr.training.runner`: accelerate, checkpoints, resuming).

The loss on random HR crops in ``[-1, 1]``: L1 of the reconstruction (decoded from a posterior sample), plus L1 of
its horizontal and vertical finite differences (edges; a cheap stand-in for LDM's LPIPS, which needs pretrained
weights), plus a small KL term towards the unit Gaussian (mean per latent element). After training the latent
scaling factor is set to ``1 / std`` of the training latents, as Stable Diffusion's 0.18215 was chosen, and the
reconstruction PSNR of the validation images is measured. ``model.trainable: decoder`` instead fine-tunes the
decoder of an existing VAE and keeps its encoder and scaling factor (its latent space).

Output: ``output_dir/checkpoints/step-*/vae/`` (with the state to resume from), ``output_dir/vae/`` (the final VAE,
a diffusers ``AutoencoderKL`` folder), ``output_dir/config.yaml``, ``output_dir/metrics.json`` and, with
``output.base_model``, the small AddSR's base-model folder around this VAE. A killed run resumes
(``output.resume: auto``); ``model.init`` starts from another VAE folder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate.utils import set_seed
from diffusers import AutoencoderKL

from ..io import find_images, load_image, pil_to_tensor, save_text
from ..metrics.psnr import psnr
from ..models.presets import SMALL, SmallModelSpec, build_small_base
from .config import CropConfig, OptimizationConfig, RunOutputConfig
from .runner import TrainingRun, TrainingTask


@dataclass
class VAEModelConfig:
    """The VAE's shape (the small AddSR's by default) or a VAE folder to continue from."""

    block_out_channels: tuple[int, ...] = SMALL.vae_channels
    """Block widths; ``len - 1`` halvings give the downsampling factor."""
    layers_per_block: int = SMALL.vae_layers_per_block
    latent_channels: int = SMALL.latent_channels
    norm_groups: int = SMALL.norm_groups
    init: str | None = None
    """A VAE folder to continue training from (its shape wins over the fields above)."""
    trainable: Literal["all", "decoder"] = "all"
    """``decoder``: fine-tune only the decoder of ``init`` (and its ``post_quant_conv``), as Stable Diffusion's
    ft-MSE VAE was. The encoder and the scaling factor stay, so the latent space, and every model trained on it,
    stays valid."""

    def __post_init__(self) -> None:
        if self.trainable not in ("all", "decoder"):
            raise ValueError(f"trainable must be 'all' or 'decoder', got {self.trainable!r}")
        if self.trainable == "decoder" and self.init is None:
            raise ValueError("trainable: decoder fine-tunes an existing VAE: set model.init to its folder")

    def spec(self) -> SmallModelSpec:
        """The small AddSR with this VAE."""
        return dataclasses.replace(
            SMALL, vae_channels=tuple(self.block_out_channels), vae_layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels, norm_groups=self.norm_groups,
        )

    def build(self) -> AutoencoderKL:
        if self.init is not None:
            return AutoencoderKL.from_pretrained(self.init)
        return AutoencoderKL(**self.spec().vae_config())

    def parameters_to_train(self, vae: AutoencoderKL) -> list[torch.nn.Parameter]:
        """The parameters ``trainable`` names; the others are frozen."""
        vae.requires_grad_(self.trainable == "all")
        if self.trainable == "decoder":
            vae.decoder.requires_grad_(True)
            vae.post_quant_conv.requires_grad_(True)
        return [parameter for parameter in vae.parameters() if parameter.requires_grad]


@dataclass
class VAELossConfig:
    """Weights of the loss terms; the L1 of the reconstruction has weight 1."""

    gradient_weight: float = 1.0
    """L1 of the horizontal and vertical finite differences (edges)."""
    kl_weight: float = 1e-5
    """KL divergence to the unit Gaussian, mean per latent element."""

    def __post_init__(self) -> None:
        if self.gradient_weight < 0 or self.kl_weight < 0:
            raise ValueError(f"loss weights must be at least 0, got {self}")


def _vae_data() -> CropConfig:
    return CropConfig(crop_size=128, num_workers=1)


def autoencoder_optimization(learning_rate: float = 4e-4, max_steps: int = 2000) -> OptimizationConfig:
    """AdamW at ``learning_rate``, betas (0.9, 0.99), no weight decay and no EMA, batch 8, float32: the defaults of
    the autoencoder runs (``addsr train vae`` and ``addsr train decoder``)."""
    return OptimizationConfig(learning_rate=learning_rate, betas=(0.9, 0.99), weight_decay=0.0, ema_decay=None,
                              batch_size=8, mixed_precision="no", max_steps=max_steps)


@dataclass
class AutoencoderOutputConfig(RunOutputConfig):
    """Where an autoencoder run writes, how often, and what it validates on."""

    output_dir: str = "runs/vae"
    checkpoint_every: int = 500
    log_every: int = 50
    tensorboard: bool = False
    validation_images: list[str] = field(default_factory=list)
    """HR images (files or folders) whose reconstruction PSNR goes into ``metrics.json``."""


@dataclass
class VAEOutputConfig(AutoencoderOutputConfig):
    """An autoencoder run's outputs, and the VAE's scaling factor and base model."""

    scale_batches: int = 8
    """Training batches whose latent standard deviation sets the scaling factor."""
    base_model: str | None = None
    """Also write a small AddSR base-model folder with this VAE here (teacher training's ``model.base_model`` and
    ``model.init_model``; see :func:`addsr.models.presets.build_small_base`); it must not exist yet."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale_batches <= 0:
            raise ValueError(f"scale_batches must be positive, got {self.scale_batches}")


@dataclass
class VAETrainingConfig:
    """A small VAE trained from scratch (``addsr train vae CONFIG``)."""

    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    data: CropConfig = field(default_factory=_vae_data)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    optimization: OptimizationConfig = field(default_factory=autoencoder_optimization)
    output: VAEOutputConfig = field(default_factory=VAEOutputConfig)


def image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical finite differences of ``[B, C, H, W]`` images."""
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def vae_loss(
    vae: AutoencoderKL, images: torch.Tensor, config: VAELossConfig, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """The loss terms and their weighted ``total`` for ``[-1, 1]`` images."""
    posterior = vae.encode(images).latent_dist
    reconstruction = vae.decode(posterior.sample(generator)).sample
    l1 = F.l1_loss(reconstruction, images)
    gradient = sum(F.l1_loss(ours, theirs) for ours, theirs in
                   zip(image_gradients(reconstruction), image_gradients(images)))
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    total = l1 + config.gradient_weight * gradient + config.kl_weight * kl
    return {"total": total, "l1": l1, "gradient": gradient, "kl": kl}


class VAEWithLoss(nn.Module):
    """The trained VAE with its loss as ``forward``, so that accelerate's wrapper (DDP) sees the pass; saves as the
    VAE."""

    def __init__(self, vae: AutoencoderKL, config: VAELossConfig):
        super().__init__()
        self.vae, self.config = vae, config

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return vae_loss(self.vae, images, self.config, generator)

    def save_pretrained(self, folder: str | Path) -> None:
        self.vae.save_pretrained(folder)


class VAEObjective:
    """What the training loop runs per micro-batch of VAE training: the loss and its backward pass."""

    auxiliary = None
    auxiliary_name = "auxiliary"

    def __init__(self, model: nn.Module):
        self.model = model

    def accumulate(
        self,
        batch: torch.Tensor,
        generator: torch.Generator | None,
        backward: Callable[[torch.Tensor], None],
        step_auxiliary: Callable[[], None] | None = None,
    ) -> dict[str, float]:
        losses = self.model(batch, generator)
        backward(losses["total"])
        terms = {key: value.item() for key, value in losses.items() if key != "total"}
        return {"loss": losses["total"].item(), **terms}


def signed_images(hr: torch.Tensor, generator: torch.Generator | None, indices: list[int]) -> torch.Tensor:
    """A VAE batch: uint8 HR crops as float images in ``[-1, 1]``."""
    return hr.float() / 127.5 - 1


def _pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    return F.pad(image, (0, -width % multiple, 0, -height % multiple), mode="reflect")


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, image: torch.Tensor) -> torch.Tensor:
    """The VAE's reconstruction (posterior mean) of a ``[1, 3, H, W]`` image in ``[0, 1]``, any size."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    padded = _pad_to_multiple(image * 2 - 1, factor)
    decoded = vae.decode(vae.encode(padded).latent_dist.mode()).sample
    return ((decoded[..., : image.shape[-2], : image.shape[-1]].clamp(-1, 1) + 1) / 2)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def reconstruction_psnr(vae: AutoencoderKL, paths: list[Path]) -> dict[str, float]:
    """PSNR (dB, Y channel, no border crop) of each image's reconstruction, keyed by file name."""
    device = next(vae.parameters()).device
    scores = {}
    for path in paths:
        image = pil_to_tensor(load_image(path)).to(device)
        scores[str(path)] = psnr(_to_uint8(reconstruct(vae, image)), _to_uint8(image), crop_border=0)
    return scores


@torch.no_grad()
def latent_std(vae: AutoencoderKL, batches: list[torch.Tensor]) -> float:
    """Standard deviation of posterior samples of ``[-1, 1]`` image batches (sets ``scaling_factor = 1 / std``)."""
    latents = torch.cat([vae.encode(batch).latent_dist.sample() for batch in batches])
    return float(latents.float().std())


def _spec_of(vae: AutoencoderKL) -> SmallModelSpec:
    """The small AddSR around this VAE."""
    return VAEModelConfig(
        block_out_channels=tuple(vae.config.block_out_channels), layers_per_block=vae.config.layers_per_block,
        latent_channels=vae.config.latent_channels, norm_groups=vae.config.norm_num_groups,
    ).spec()


def train_vae(config: VAETrainingConfig) -> Path:
    """Train the VAE as ``config`` says (resuming where a killed run stopped); return its folder ``output_dir/vae``.

    Run plainly (one process) or under ``accelerate launch`` (one process per GPU)."""
    set_seed(config.optimization.seed)  # the random initial VAE, the same in every process
    vae = config.model.build()
    config.model.parameters_to_train(vae)
    return train_autoencoder(config, "vae", VAEWithLoss(vae, config.loss), vae,
                             lambda run, folder, seconds: _finish(config, vae.eval(), run, folder, seconds))


def train_autoencoder(
    config: VAETrainingConfig, name: str, model_with_loss: nn.Module, trained: nn.Module,
    finish: Callable[[TrainingRun, Path, float], None],
) -> Path:
    """Train the parameters of ``trained`` that require gradients in the shared loop, ``model_with_loss(images,
    generator)`` giving the loss terms of ``[-1, 1]`` HR crops; then, on the main process and with the EMA weights,
    ``finish(run, folder, train_seconds)`` writes the results. Returns ``folder``, ``output_dir/name``."""
    task = TrainingTask(
        models={name: model_with_loss},
        trainable={f"{name}.{key}": parameter for key, parameter in trained.named_parameters()
                   if parameter.requires_grad},
        make_objective=lambda models, device, dtype: VAEObjective(models[name]),
        make_batches=lambda images: signed_images,
    )
    run = TrainingRun(config, task)
    started = time.perf_counter()
    run.train()
    train_seconds = time.perf_counter() - started
    folder = Path(config.output.output_dir) / name
    if run.accelerator.is_main_process:
        with run.ema_applied(), torch.no_grad():
            finish(run, folder, train_seconds)
    run.accelerator.wait_for_everyone()
    return folder


def _finish(config: VAETrainingConfig, vae: AutoencoderKL, run: TrainingRun, folder: Path, seconds: float) -> None:
    """Set the scaling factor from the next training batches, write the VAE, its metrics and the base folder."""
    output = config.output
    std = latent_std(vae, [signed_images(next(run.data)[0].to(run.device), None, []) for _ in
                           range(output.scale_batches)])
    if config.model.trainable == "all":
        vae.register_to_config(scaling_factor=1.0 / std)
    save_vae(vae, folder)
    scores = reconstruction_psnr(vae, find_images(output.validation_images)) if output.validation_images else {}
    metrics = {
        "steps": config.optimization.max_steps, "train_seconds": round(seconds, 1), "device": str(run.device),
        "threads": torch.get_num_threads(), "latent_std": std, "scaling_factor": vae.config.scaling_factor,
        "parameters": sum(p.numel() for p in vae.parameters()),
        "trained_parameters": sum(p.numel() for p in run.trainable.values()),
        "validation_psnr_y_mean": float(np.mean(list(scores.values()))) if scores else None,
        "validation_psnr_y": scores,
    }
    save_text(json.dumps(metrics, indent=2), Path(output.output_dir) / "metrics.json")
    if output.base_model is not None:
        build_small_base(output.base_model, vae=copy.deepcopy(vae).cpu(), spec=_spec_of(vae),
                         seed=config.optimization.seed)


def save_vae(vae: nn.Module, folder: Path) -> Path:
    """Write a diffusers model folder (a VAE, or ``addsr train decoder``'s small decoder) under a temporary name,
    then swap it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    vae.save_pretrained(staging)
    if folder.exists():
        retired = folder.with_name(f".{folder.name}-old")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(folder, retired)
        os.replace(staging, folder)
        shutil.rmtree(retired)
    else:
        os.replace(staging, folder)
    return folder
