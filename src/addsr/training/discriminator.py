"""The projected discriminator of TA-ADD (StyleGAN-T style): trainable heads on the token features of a frozen
ViT (DINO ViT-S/16), projection-conditioned on the CLS token of a second frozen ViT (DINOv2 ViT-S/14) applied to
the LR condition image."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch.nn.utils.parametrizations import spectral_norm

from .diffaug import diff_augment
from ..draws import randint, uniform


@dataclass
class ProjectedDiscriminatorConfig:
    """What the discriminator is built from; the defaults are the released AddSR setup."""

    feature_model: str = "vit_small_patch16_224.dino"
    """timm name of the feature network (DINO v1 ViT-S/16)."""
    feature_checkpoint: str | None = None
    """Local weights of the feature network, e.g. the original ``dino_deitsmall16_pretrain.pth``."""
    feature_blocks: tuple[int, ...] = (2, 5, 8, 11)
    """Transformer blocks whose outputs get a head."""
    use_patch_embedding: bool = True
    """Also put a head on the patch embedding (tokens after adding the position embedding)."""
    condition_model: str = "vit_small_patch14_dinov2.lvd142m"
    """timm name of the condition network (DINOv2 ViT-S/14)."""
    condition_checkpoint: str | None = None
    """Local weights of the condition network, e.g. the original ``dinov2_vits14_pretrain.pth``."""
    normalize_condition: bool = True
    """ImageNet-normalise the condition network's input; the released code feeds it ``[0, 1]`` images as they are."""
    crop_probability: float = 0.5
    """Per image: probability of a random crop at the feature network's size, when the image is larger, instead of
    resizing it."""
    cmap_dim: int = 64
    """Width of the projection that the condition vector is compared with."""
    kernel_size: int = 9
    """Kernel of each head's residual block (over the token sequence)."""
    norm_groups: int = 4
    """Groups of each head's GroupNorm."""
    augment: tuple[str, ...] = ("translation", "cutout")
    """DiffAugment policy applied to real and fake images."""


def load_backbone_weights(model: VisionTransformer, checkpoint: str | Path) -> VisionTransformer:
    """Load a ``.pth`` or ``.safetensors`` state dict into a timm ViT, mapping original DINO/DINOv2 key names and
    resampling position embeddings with timm's own checkpoint filter."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"Discriminator backbone checkpoint {path} does not exist; download the original weights (e.g. "
            "dino_deitsmall16_pretrain.pth, dinov2_vits14_pretrain.pth) and pass their local paths as "
            "feature_checkpoint / condition_checkpoint"
        )
    if path.suffix == ".safetensors":
        state_dict = load_file(path)
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint_filter_fn(state_dict, model))
    return model


def create_backbone(model_name: str, checkpoint: str | Path | None) -> VisionTransformer:
    """A frozen timm ViT created by name (without downloading) and loaded from a local checkpoint."""
    if checkpoint is None:
        raise ValueError(
            f"The discriminator needs local weights for {model_name!r}; set feature_checkpoint and "
            "condition_checkpoint in ProjectedDiscriminatorConfig"
        )
    model = timm.create_model(model_name, pretrained=False)
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"{model_name!r} is a {type(model).__name__}; the discriminator needs a timm VisionTransformer")
    return load_backbone_weights(model, checkpoint).eval().requires_grad_(False)


def _input_size(model: VisionTransformer) -> tuple[int, int]:
    height, width = model.patch_embed.img_size
    return int(height), int(width)


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


class ViTFeatures(nn.Module):
    """Token features of chosen levels of a frozen timm ViT, each as ``[B, C, N]`` patch tokens plus the CLS token
    (the readout added to every patch token)."""

    def __init__(self, model: VisionTransformer, blocks: tuple[int, ...], use_patch_embedding: bool = True):
        super().__init__()
        depth = len(model.blocks)
        if not blocks or any(not 0 <= block < depth for block in blocks):
            raise ValueError(
                f"feature_blocks must be indices into the {depth} blocks of the feature network, got {blocks}"
            )
        self.model = model.eval().requires_grad_(False)
        self.blocks = tuple(sorted(set(blocks)))
        self.use_patch_embedding = use_patch_embedding

    @property
    def num_levels(self) -> int:
        return len(self.blocks) + int(self.use_patch_embedding)

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def input_size(self) -> tuple[int, int]:
        return _input_size(self.model)

    def train(self, mode: bool = True) -> ViTFeatures:
        """The backbone always stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def _readout(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.model.num_prefix_tokens:] + tokens[:, :1]
        return patches.transpose(1, 2)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Features of ImageNet-normalised images at the network's input size."""
        tokens = self.model.patch_embed(images)
        tokens = self.model.norm_pre(self.model.patch_drop(self.model._pos_embed(tokens)))
        features = [self._readout(tokens)] if self.use_patch_embedding else []
        for index, block in enumerate(self.model.blocks[: self.blocks[-1] + 1]):
            tokens = block(tokens)
            if index in self.blocks:
                features.append(self._readout(tokens))
        return features


def _conv_block(channels: int, kernel_size: int, groups: int) -> nn.Sequential:
    """Spectral-norm 1D convolution over tokens (circular padding), GroupNorm, LeakyReLU(0.2)."""
    conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, padding_mode="circular")
    return nn.Sequential(spectral_norm(conv), nn.GroupNorm(groups, channels), nn.LeakyReLU(0.2))


class EqualizedLinear(nn.Module):
    """Linear layer with unit-variance weights scaled by ``1/sqrt(in_features)`` at run time (StyleGAN's
    equalised learning rate)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.gain = 1 / math.sqrt(in_features)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs, self.weight * self.gain, self.bias)


class DiscriminatorHead(nn.Module):
    """Per-token logits of one feature level, projection-conditioned: ``<proj(h), W c> / sqrt(cmap_dim)``."""

    def __init__(self, channels: int, condition_dim: int, cmap_dim: int = 64, kernel_size: int = 9, groups: int = 4):
        super().__init__()
        self.block = _conv_block(channels, 1, groups)
        self.residual = _conv_block(channels, kernel_size, groups)
        self.projection = spectral_norm(nn.Conv1d(channels, cmap_dim, kernel_size=1))
        self.condition_map = EqualizedLinear(condition_dim, cmap_dim)
        self.cmap_dim = cmap_dim

    def forward(self, features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``features [B, C, N]``, ``condition [B, condition_dim]`` -> logits ``[B, N]``."""
        dtype = self.condition_map.weight.dtype
        hidden = self.block(features.to(dtype))
        hidden = (self.residual(hidden) + hidden) / math.sqrt(2)
        projected = self.projection(hidden)
        cmap = self.condition_map(condition.to(dtype)).unsqueeze(-1)
        return (projected * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)


class ProjectedDiscriminator(nn.Module):
    """Discriminator of images in ``[0, 1]`` given the condition vector of their LR image.

    Only ``heads`` is trainable; the two backbones are frozen and stay in eval mode. Gradients flow through the
    feature network into the input images (the generator's adversarial loss needs them).
    """

    def __init__(
        self,
        feature_network: VisionTransformer,
        condition_network: VisionTransformer,
        config: ProjectedDiscriminatorConfig | None = None,
    ):
        super().__init__()
        self.config = config or ProjectedDiscriminatorConfig()
        self.features = ViTFeatures(feature_network, self.config.feature_blocks, self.config.use_patch_embedding)
        self.condition_network = condition_network.eval().requires_grad_(False)
        condition_dim = condition_network.embed_dim
        self.heads = nn.ModuleList(
            DiscriminatorHead(
                self.features.embed_dim, condition_dim, self.config.cmap_dim, self.config.kernel_size,
                self.config.norm_groups,
            )
            for _ in range(self.features.num_levels)
        )

    @classmethod
    def from_config(cls, config: ProjectedDiscriminatorConfig) -> ProjectedDiscriminator:
        """Create both backbones by timm name and load them from the configured local checkpoints."""
        return cls(
            create_backbone(config.feature_model, config.feature_checkpoint),
            create_backbone(config.condition_model, config.condition_checkpoint),
            config,
        )

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        """The heads follow ``mode``; the backbones always stay in eval mode."""
        super().train(mode)
        self.condition_network.eval()
        return self

    @torch.no_grad()
    def embed_condition(self, images: torch.Tensor) -> torch.Tensor:
        """Condition vectors ``[B, D]``: the condition network's final CLS token of ``[0, 1]`` images (bilinear
        resize to its input size)."""
        dtype = next(self.condition_network.parameters()).dtype
        images = F.interpolate(images.to(dtype), size=_input_size(self.condition_network), mode="bilinear")
        if self.config.normalize_condition:
            images = _normalize(images)
        return self.condition_network.forward_features(images)[:, 0]

    def _fit_input_size(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per image: a random crop at the feature network's size (with ``crop_probability``, when larger), else an
        area resize to that size."""
        size = self.features.input_size
        batch, height, width = images.shape[0], *images.shape[-2:]
        crop = uniform(0.0, 1.0, batch, generator, images.device) < self.config.crop_probability
        tops = randint(0, max(height - size[0], 0) + 1, (batch,), generator, images.device)
        lefts = randint(0, max(width - size[1], 0) + 1, (batch,), generator, images.device)
        can_crop = height >= size[0] and width >= size[1] and (height, width) != size
        fitted = []
        for image, do_crop, top, left in zip(images, crop.tolist(), tops.tolist(), lefts.tolist()):
            if can_crop and do_crop:
                fitted.append(image[:, top: top + size[0], left: left + size[1]])
            else:
                fitted.append(F.interpolate(image.unsqueeze(0), size=size, mode="area").squeeze(0))
        return torch.stack(fitted)

    def forward(
        self, images: torch.Tensor, condition: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Logits ``[B, levels * tokens]`` of ``[0, 1]`` images; ``condition`` from :meth:`embed_condition`."""
        dtype = next(self.features.model.parameters()).dtype
        images = diff_augment(images.to(dtype), self.config.augment, fill=0.5, generator=generator)
        images = _normalize(self._fit_input_size(images, generator))
        features = self.features(images)
        return torch.cat([head(level, condition) for head, level in zip(self.heads, features)], dim=1)
