"""Training a small VAE (``AutoencoderKL``) from scratch for the small AddSR, where no pretrained one exists.

The loss on random HR crops in ``[-1, 1]``: L1 of the reconstruction (decoded from a posterior sample), plus L1 of
its horizontal and vertical finite differences (edges; a cheap stand-in for LDM's LPIPS, which needs pretrained
weights), plus a small KL term towards the unit Gaussian (mean per latent element). After training the latent
scaling factor is set to ``1 / std`` of the training latents, as Stable Diffusion's 0.18215 was chosen, and the
reconstruction PSNR of the validation images is measured. ``model.trainable: decoder`` instead fine-tunes the
decoder of an existing VAE and keeps its encoder and scaling factor (its latent space).

Output: ``output_dir/vae/`` (a diffusers ``AutoencoderKL`` folder, rewritten at every checkpoint),
``output_dir/config.yaml``, ``output_dir/metrics.json`` and, with ``output.base_model``, the small AddSR's base-model
folder around this VAE. A run starts over; ``model.init`` continues from a VAE folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..devices import resolve_device
from ..io import find_images, load_image, pil_to_tensor, save_text
from ..metrics.psnr import psnr
from ..models.presets import SMALL, SmallModelSpec, build_small_base
from .config import config_to_dict
from .data import HRCropDataset, ShardedSampler, list_hr_images

logger = logging.getLogger(__name__)


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
class VAEDataConfig:
    """HR training images and their random crops."""

    hr: list[str] = field(default_factory=list)
    """Folders of HR images (searched recursively) and/or text files listing image paths, one a line."""
    crop_size: int = 128
    flip: bool = True
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.crop_size <= 0 or self.crop_size % 8:
            raise ValueError(f"crop_size must be a positive multiple of 8, got {self.crop_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be at least 0, got {self.num_workers}")


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


@dataclass
class VAEOptimizationConfig:
    """AdamW, batch and length of the run."""

    learning_rate: float = 4e-4
    final_learning_rate: float | None = None
    """Cosine decay from ``learning_rate`` to this over ``max_steps``; ``null``: constant."""
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 8
    max_steps: int = 2000
    seed: int = 0
    device: str = "auto"
    """``auto`` (CUDA, MPS, then CPU), ``cpu``, ``cuda``, ..."""

    def __post_init__(self) -> None:
        for name in ("learning_rate", "max_grad_norm", "batch_size", "max_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.final_learning_rate is not None and not 0 <= self.final_learning_rate <= self.learning_rate:
            raise ValueError(
                f"final_learning_rate must be in [0, learning_rate] or null, got {self.final_learning_rate}"
            )


@dataclass
class VAEOutputConfig:
    """Where the run writes, how often, and what it validates on."""

    output_dir: str = "runs/vae"
    checkpoint_every: int = 500
    """Steps between rewrites of ``output_dir/vae/``; the last step is always written."""
    log_every: int = 50
    """Steps averaged into one log line."""
    validation_images: list[str] = field(default_factory=list)
    """HR images (files or folders) whose reconstruction PSNR goes into ``metrics.json``."""
    scale_batches: int = 8
    """Training batches whose latent standard deviation sets the scaling factor."""
    base_model: str | None = None
    """Also write a small AddSR base-model folder with this VAE here (teacher training's ``model.base_model`` and
    ``model.init_model``; see :func:`addsr.models.presets.build_small_base`); it must not exist yet."""
    progress_bar: bool = True

    def __post_init__(self) -> None:
        for name in ("checkpoint_every", "log_every", "scale_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class VAETrainingConfig:
    """A small VAE trained from scratch (``addsr train vae CONFIG``)."""

    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    optimization: VAEOptimizationConfig = field(default_factory=VAEOptimizationConfig)
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


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def reconstruction_psnr(vae: AutoencoderKL, paths: list[Path]) -> dict[str, float]:
    """PSNR (dB, Y channel, no border crop) of each image's reconstruction, keyed by file name."""
    device = next(vae.parameters()).device
    scores = {}
    for path in paths:
        image = pil_to_tensor(load_image(path)).to(device)
        scores[str(path)] = psnr(to_uint8(reconstruct(vae, image)), to_uint8(image), crop_border=0)
    return scores


@torch.no_grad()
def latent_std(vae: AutoencoderKL, batches: list[torch.Tensor]) -> float:
    """Standard deviation of posterior samples of ``[-1, 1]`` image batches (sets ``scaling_factor = 1 / std``)."""
    latents = torch.cat([vae.encode(batch).latent_dist.sample() for batch in batches])
    return float(latents.float().std())


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


def learning_rate_schedule(
    optimizer: torch.optim.Optimizer, config: VAEOptimizationConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay from ``learning_rate`` to ``final_learning_rate`` over ``max_steps`` (constant when unset)."""
    final = config.learning_rate if config.final_learning_rate is None else config.final_learning_rate
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.max_steps, eta_min=final)


def _spec_of(vae: AutoencoderKL) -> SmallModelSpec:
    """The small AddSR around this VAE."""
    return VAEModelConfig(
        block_out_channels=tuple(vae.config.block_out_channels), layers_per_block=vae.config.layers_per_block,
        latent_channels=vae.config.latent_channels, norm_groups=vae.config.norm_num_groups,
    ).spec()


def hr_batches(data: VAEDataConfig, optimization: VAEOptimizationConfig) -> Iterator[torch.Tensor]:
    """Endless batches of random HR crops (uint8, ``[B, 3, crop, crop]``)."""
    dataset = HRCropDataset(list_hr_images(data.hr), data.crop_size, data.flip)
    return iter(DataLoader(
        dataset, batch_size=optimization.batch_size, drop_last=True,
        sampler=ShardedSampler(len(dataset), optimization.seed), num_workers=data.num_workers,
    ))


def fit(
    model: nn.Module, parameters: list[nn.Parameter], losses_of: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    batches: Iterator[torch.Tensor], optimization: VAEOptimizationConfig, output: VAEOutputConfig, folder: Path,
    device: torch.device,
) -> float:
    """Minimise ``losses_of(images)["total"]`` over ``parameters`` for ``max_steps`` batches of ``[-1, 1]`` crops:
    AdamW, the cosine schedule, gradient clipping; interval means of every loss term logged every ``log_every``
    steps; ``model`` written to ``folder`` every ``checkpoint_every`` steps and at the end. Returns the seconds."""
    optimizer = torch.optim.AdamW(parameters, lr=optimization.learning_rate, betas=optimization.betas,
                                  weight_decay=optimization.weight_decay)
    schedule = learning_rate_schedule(optimizer, optimization)
    started = time.perf_counter()
    interval: dict[str, list[float]] = {}
    for step in tqdm(range(1, optimization.max_steps + 1), desc=folder.name, disable=not output.progress_bar):
        losses = losses_of(next(batches).to(device).float() / 127.5 - 1)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(parameters, optimization.max_grad_norm)
        optimizer.step()
        schedule.step()
        for key, value in losses.items():
            interval.setdefault(key, []).append(value.item())
        if step % output.log_every == 0 or step == optimization.max_steps:
            means = " ".join(f"{key} {sum(v) / len(v):.4f}" for key, v in interval.items())
            logger.info("step %d: %s", step, means)
            interval.clear()
        if step % output.checkpoint_every == 0 or step == optimization.max_steps:
            save_vae(model, folder)
    return time.perf_counter() - started


def train_vae(config: VAETrainingConfig) -> Path:
    """Train the VAE as ``config`` says; return its folder ``output_dir/vae``."""
    optimization, output = config.optimization, config.output
    output_dir = Path(output.output_dir)
    device = resolve_device(optimization.device)
    torch.manual_seed(optimization.seed)
    vae = config.model.build().to(device).train()
    parameters = config.model.parameters_to_train(vae)
    generator = torch.Generator(device).manual_seed(optimization.seed)
    batches = hr_batches(config.data, optimization)
    save_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), output_dir / "config.yaml")  # the run starts
    folder = output_dir / "vae"
    train_seconds = fit(vae, parameters, lambda images: vae_loss(vae, images, config.loss, generator), batches,
                        optimization, output, folder, device)

    vae.eval()
    std = latent_std(vae, [next(batches).to(device).float() / 127.5 - 1 for _ in range(output.scale_batches)])
    if config.model.trainable == "all":
        vae.register_to_config(scaling_factor=1.0 / std)
    save_vae(vae, folder)
    scores = reconstruction_psnr(vae, find_images(output.validation_images)) if output.validation_images else {}
    metrics = {
        "steps": optimization.max_steps, "train_seconds": round(train_seconds, 1), "device": str(device),
        "threads": torch.get_num_threads(), "latent_std": std, "scaling_factor": vae.config.scaling_factor,
        "parameters": sum(p.numel() for p in vae.parameters()),
        "trained_parameters": sum(p.numel() for p in parameters),
        "validation_psnr_y_mean": float(np.mean(list(scores.values()))) if scores else None,
        "validation_psnr_y": scores,
    }
    save_text(json.dumps(metrics, indent=2), output_dir / "metrics.json")
    if output.base_model is not None:
        build_small_base(output.base_model, vae=vae.cpu(), spec=_spec_of(vae), seed=optimization.seed)
    return folder
