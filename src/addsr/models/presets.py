"""The small AddSR architecture, as data: a small VAE, U-Net and ControlNet, a tiny CLIP text encoder with a
byte-level tokenizer, and a writer of a randomly initialised base-model folder that teacher training starts from.

Nothing pretrained exists for this scale, so every part is small and trained here (the VAE by
``addsr.training.vae``, the U-Net and ControlNet by teacher training), except the text encoder: without a tagger
prompts carry no information, so it stays a frozen random network and its tokenizer keeps only the start and end
tokens (every prompt encodes to the same two tokens). There is no RAM tagger, hence no image cross-attention.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..diffusion import SD2_SCHEDULER_CONFIG, NoiseSchedule
from ..model_folder import BaseComponents, save_base_components
from .controlnet import ControlNet
from .unet import UNet

START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
DISCRIMINATOR_BACKBONE = "test_vit"
"""timm's smallest ViT (patch 16, 160 px, width 64, 6 blocks), the feature and the condition network of the small
model's projected discriminator, with random frozen weights: no pretrained DINO of this size exists here."""
DISCRIMINATOR_FEATURE_BLOCKS = (1, 3, 5)
DISCRIMINATOR_FILES = {"feature": "feature.safetensors", "condition": "condition.safetensors"}


def byte_level_clip_tokenizer(max_length: int) -> CLIPTokenizer:
    """A CLIP tokenizer without a vocabulary file: one token per byte (512 symbols, word-final or not), no merges,
    then the start and end tokens (ids 512 and 513). ``max_length`` counts both; with 2 every prompt becomes
    ``[start, end]``."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (the start and end tokens), got {max_length}")
    symbols = sorted(ByteLevel.alphabet())
    vocab = symbols + [symbol + "</w>" for symbol in symbols] + [START_TOKEN, END_TOKEN]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=[], model_max_length=max_length)


@dataclass(frozen=True)
class SmallModelSpec:
    """Sizes of the small AddSR; the configs of its parts follow from them."""

    vae_channels: tuple[int, ...] = (32, 64, 128)
    """VAE block widths; ``len - 1`` halvings give the latent downsampling factor (3 blocks: 4)."""
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 128)
    """U-Net (and ControlNet encoder) block widths; the first level has no attention, the others do."""
    unet_layers_per_block: int = 1
    attention_head_width: int = 32
    """Channels per attention head."""
    norm_groups: int = 16
    text_width: int = 64
    """Width of the text encoder and of the U-Net's cross-attention."""
    text_layers: int = 1
    text_length: int = 2
    """Tokens per prompt: 2 keeps only the start and end tokens, so prompts carry no information."""
    conditioning_channels: int = 16
    """Width of the first layer of the ControlNet's condition embedding (doubled per halving)."""

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    def vae_config(self) -> dict:
        levels = len(self.vae_channels)
        return dict(
            in_channels=3, out_channels=3, latent_channels=self.latent_channels,
            block_out_channels=self.vae_channels, layers_per_block=self.vae_layers_per_block,
            down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
            norm_num_groups=self.norm_groups, sample_size=256,
        )

    def unet_config(self) -> dict:
        levels = len(self.unet_channels)
        return dict(
            sample_size=256 // self.downsampling_factor, in_channels=self.latent_channels,
            out_channels=self.latent_channels, block_out_channels=self.unet_channels,
            layers_per_block=self.unet_layers_per_block, norm_num_groups=self.norm_groups,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
            cross_attention_dim=self.text_width,
            # diffusers reads attention_head_dim as the number of heads (its legacy naming)
            attention_head_dim=tuple(max(1, width // self.attention_head_width) for width in self.unet_channels),
            use_linear_projection=True, use_image_cross_attention=False,
        )

    def controlnet_conditioning_channels(self) -> tuple[int, ...]:
        """The condition embedding halves the image once per entry after the first, down to the latent size."""
        halvings = len(self.vae_channels) - 1
        return tuple(self.conditioning_channels * 2**level for level in range(halvings + 1))

    def text_encoder_config(self) -> CLIPTextConfig:
        vocab_size = len(byte_level_clip_tokenizer(self.text_length))
        return CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=self.text_width, intermediate_size=2 * self.text_width,
            num_attention_heads=max(1, self.text_width // self.attention_head_width),
            num_hidden_layers=self.text_layers, max_position_embeddings=self.text_length,
            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        )


SMALL = SmallModelSpec()
"""The small AddSR shipped as the default model (``docs/small-model.md``)."""


@dataclass
class SmallModels:
    """Randomly initialised parts of a small AddSR."""

    vae: AutoencoderKL
    unet: UNet
    controlnet: ControlNet
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer

    def parameter_counts(self) -> dict[str, int]:
        parts = {"vae": self.vae, "unet": self.unet, "controlnet": self.controlnet, "text_encoder": self.text_encoder}
        return {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}


def build_small_models(spec: SmallModelSpec = SMALL, seed: int = 0) -> SmallModels:
    """Every part of ``spec`` from random weights (seeded); the ControlNet starts as a copy of the U-Net's encoder."""
    torch.manual_seed(seed)
    unet = UNet(**spec.unet_config())
    controlnet = ControlNet.from_unet(unet, conditioning_embedding_out_channels=spec.controlnet_conditioning_channels())
    return SmallModels(
        vae=AutoencoderKL(**spec.vae_config()),
        unet=unet,
        controlnet=controlnet,
        text_encoder=CLIPTextModel(spec.text_encoder_config()).eval(),
        tokenizer=byte_level_clip_tokenizer(spec.text_length),
    )


def _load_vae(vae: AutoencoderKL | str | Path, spec: SmallModelSpec) -> AutoencoderKL:
    if isinstance(vae, AutoencoderKL):
        loaded = vae
    else:
        path = Path(vae)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a VAE folder (no config.json); train one with addsr.training.vae")
        loaded = AutoencoderKL.from_pretrained(path)
    factor = 2 ** (len(loaded.config.block_out_channels) - 1)
    if (loaded.config.latent_channels, factor) != (spec.latent_channels, spec.downsampling_factor):
        raise ValueError(
            f"The VAE has {loaded.config.latent_channels} latent channels and downsamples by {factor}; the spec "
            f"needs {spec.latent_channels} and {spec.downsampling_factor}: train a VAE of this spec"
        )
    return loaded


def write_discriminator_backbones(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Random weights (seeded, different for the two) of the discriminator's feature and condition networks, as
    safetensors files in ``folder`` for ``discriminator.feature_checkpoint`` / ``condition_checkpoint``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for index, (role, name) in enumerate(DISCRIMINATOR_FILES.items()):
        torch.manual_seed(seed + index)
        paths[role] = folder / name
        save_file(timm.create_model(DISCRIMINATOR_BACKBONE, pretrained=False).state_dict(), paths[role])
    return paths


def build_small_base(
    folder: str | Path, vae: AutoencoderKL | str | Path | None = None, spec: SmallModelSpec = SMALL, seed: int = 0
) -> Path:
    """Write a base-model folder (``vae/ text_encoder/ tokenizer/ scheduler/ unet/ controlnet/``) of ``spec`` with
    random weights, or with ``vae`` (a trained ``AutoencoderKL`` or its folder), plus ``discriminator/`` (the
    backbones of :func:`write_discriminator_backbones`). Teacher training starts from it with ``model.base_model``
    and ``model.init_model`` both set to it and ``train_all: true``. Written under a temporary name and renamed into
    place; an existing ``folder`` is an error."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; choose a new folder for the small base model")
    models = build_small_models(spec, seed)
    if vae is not None:
        models.vae = _load_vae(vae, spec)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        schedule = NoiseSchedule.from_config(SD2_SCHEDULER_CONFIG)
        save_base_components(staging, BaseComponents(models.vae, models.text_encoder, models.tokenizer, schedule))
        models.unet.save_pretrained(staging / "unet")
        models.controlnet.save_pretrained(staging / "controlnet")
        write_discriminator_backbones(staging / "discriminator", seed)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
