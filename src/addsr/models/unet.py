"""The SeeSR/AddSR U-Net: diffusers' ``UNet2DConditionModel`` with image cross-attention."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from .image_attention import DEFAULT_IMAGE_CROSS_ATTENTION_DIM, ImageCrossAttentionMixin, with_base_init_signature


class UNet(ImageCrossAttentionMixin, UNet2DConditionModel):
    """Stable Diffusion U-Net plus SeeSR's image cross-attention after every text cross-attention.

    Config keys are diffusers' plus ``use_image_cross_attention`` (the released flag; ``False`` gives a plain
    ``UNet2DConditionModel``) and ``image_cross_attention_dim`` (width of the image tokens, 512 for RAM).
    Loads the released ``unet/`` folders with ``UNet.from_pretrained(path)``, and a plain Stable Diffusion
    ``unet/`` with ``UNet.from_pretrained(path, use_image_cross_attention=True)`` (fresh image attentions).
    """

    @with_base_init_signature(UNet2DConditionModel)
    def __init__(
        self,
        *,
        use_image_cross_attention: bool = False,
        image_cross_attention_dim: int = DEFAULT_IMAGE_CROSS_ATTENTION_DIM,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._add_image_attentions(use_image_cross_attention, image_cross_attention_dim)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *,
        image_encoder_hidden_states: torch.Tensor | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> UNet2DConditionOutput | tuple:
        """diffusers' forward; ``image_encoder_hidden_states`` (batch, tokens, image_cross_attention_dim) feed the
        image attentions and are required exactly when the model has them. Other keyword arguments go to diffusers.
        """
        with self._image_attention_inputs(image_encoder_hidden_states, batch_size=sample.shape[0]):
            return super().forward(
                sample,
                timestep,
                encoder_hidden_states,
                down_block_additional_residuals=down_block_additional_residuals,
                mid_block_additional_residual=mid_block_additional_residual,
                return_dict=return_dict,
                **kwargs,
            )
