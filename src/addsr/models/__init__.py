"""SeeSR/AddSR networks: diffusers' U-Net and ControlNet with image cross-attention."""

from .controlnet import ControlNet
from .image_attention import DEFAULT_IMAGE_CROSS_ATTENTION_DIM, IMAGE_ATTENTION_BLOCK_TYPES
from .unet import UNet

__all__ = ["ControlNet", "DEFAULT_IMAGE_CROSS_ATTENTION_DIM", "IMAGE_ATTENTION_BLOCK_TYPES", "UNet"]
