"""Tiny random models built in code, shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from addsr.diffusion import SD2_SCHEDULER_CONFIG
from addsr.models.presets import byte_level_clip_tokenizer

torch.set_num_threads(1)  # tiny models: threads cost more than they give

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
TEXT_DIM = 32
IMAGE_EMBED_DIM = 16
IMAGE_TOKENS = 5
MAX_SHIPPED_MB = 50
"""The size budget of the shipped default model's files."""


def shared_path(relative: str) -> Path:
    """A path under ../shared, skipping the test with a clear message when that folder is absent."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared folder), which is absent here")
    return path


def tiny_unet_config(image_attention: bool = True, image_dim: int = IMAGE_EMBED_DIM) -> dict:
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        use_linear_projection=True,
        use_image_cross_attention=image_attention,
        image_cross_attention_dim=image_dim,
    )


def tiny_unet(image_attention: bool = True, image_dim: int = IMAGE_EMBED_DIM):
    from addsr.models import UNet

    torch.manual_seed(0)
    return UNet(**tiny_unet_config(image_attention, image_dim))


def tiny_controlnet(unet):
    from addsr.models import ControlNet

    torch.manual_seed(1)
    controlnet = ControlNet.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8))
    with torch.no_grad():  # diffusers zero-initialises the residual convs; give them weights so tests see the branch
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            module.weight.normal_(0, 0.05)
        controlnet.controlnet_cond_embedding.conv_out.weight.normal_(0, 0.05)
    return controlnet


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(2)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )


def tiny_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer: every byte is a token, no merges."""
    return byte_level_clip_tokenizer(24)


def tiny_text_encoder(vocab_size: int) -> CLIPTextModel:
    torch.manual_seed(3)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=24, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config)


class TinyTagger(torch.nn.Module):
    """Implements the Tagger protocol: tags from brightness, embeddings from a fixed random projection."""

    input_size = 24

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.proj = torch.nn.Conv2d(3, IMAGE_EMBED_DIM, kernel_size=12, stride=12)
        self.calls: list[torch.Tensor] = []

    def tags(self, images: torch.Tensor) -> list[str]:
        return ["bright, sky" if image.mean() > 0.5 else "dark, night" for image in images]

    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(images.detach().clone())
        tokens = self.proj(images.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)


def build_pipe(image_attention: bool = True, tagger=None, image_dim: int = IMAGE_EMBED_DIM):
    """A tiny pipeline; with image attention its tagger is ``tagger`` (of width ``image_dim``) or a TinyTagger."""
    from addsr import AddSRPipeline, NoiseSchedule

    tokenizer = tiny_tokenizer()
    tagger = tagger or (TinyTagger() if image_attention else None)
    unet = tiny_unet(image_attention, image_dim)
    return AddSRPipeline(
        unet=unet,
        controlnet=tiny_controlnet(unet),
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        schedule=NoiseSchedule.from_config(SD2_SCHEDULER_CONFIG),
        tagger=tagger,
    ).to("cpu", torch.float32)


@pytest.fixture
def tiny_pipe():
    """A pipeline with image cross-attention and the tiny tagger."""
    return build_pipe()


@pytest.fixture
def plain_pipe():
    """A pipeline without image cross-attention, so it needs no tagger and saves completely."""
    return build_pipe(image_attention=False)
