"""The SeeSR/AddSR ControlNet: diffusers' ``ControlNetModel`` with image cross-attention."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.controlnets.controlnet import ControlNetOutput

from .image_attention import DEFAULT_IMAGE_CROSS_ATTENTION_DIM, ImageCrossAttentionMixin, with_base_init_signature


class ControlNet(ImageCrossAttentionMixin, ControlNetModel):
    """ControlNet plus SeeSR's image cross-attention after every text cross-attention of its encoder.

    Config keys are diffusers' plus ``use_image_cross_attention`` and ``image_cross_attention_dim`` (see
    ``UNet``). The condition is the RGB image in [0, 1] at output resolution.
    """

    @with_base_init_signature(ControlNetModel)
    def __init__(
        self,
        *,
        use_image_cross_attention: bool = False,
        image_cross_attention_dim: int = DEFAULT_IMAGE_CROSS_ATTENTION_DIM,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._add_image_attentions(use_image_cross_attention, image_cross_attention_dim)

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        load_weights_from_unet: bool = True,
        conditioning_channels: int = 3,
        use_image_cross_attention: bool | None = None,
        image_cross_attention_dim: int | None = None,
    ) -> ControlNet:
        """A ControlNet shaped like ``unet``'s encoder, as in diffusers, optionally with its weights.

        The image-attention settings default to the U-Net's. Every parameter whose name the U-Net shares is
        copied (image attentions included, when both have them); a plain U-Net leaves the ControlNet's image
        attentions freshly initialised.
        """
        unet_config = unet.config
        if use_image_cross_attention is None:
            use_image_cross_attention = unet_config.get("use_image_cross_attention", False)
        if image_cross_attention_dim is None:
            image_cross_attention_dim = unet_config.get("image_cross_attention_dim", DEFAULT_IMAGE_CROSS_ATTENTION_DIM)
        with torch.device("meta"):  # only diffusers' mapping of the U-Net config; no memory, no weights
            layout = ControlNetModel.from_unet(
                unet,
                controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
                conditioning_embedding_out_channels=conditioning_embedding_out_channels,
                load_weights_from_unet=False,
                conditioning_channels=conditioning_channels,
            )
        config = {key: value for key, value in layout.config.items() if not key.startswith("_")}
        controlnet = cls(
            **config,
            use_image_cross_attention=use_image_cross_attention,
            image_cross_attention_dim=image_cross_attention_dim,
        )
        if load_weights_from_unet:
            own_keys = controlnet.state_dict().keys()
            shared = {key: value for key, value in unet.state_dict().items() if key in own_keys}
            controlnet.load_state_dict(shared, strict=False)
        return controlnet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        *,
        image_encoder_hidden_states: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> ControlNetOutput | tuple:
        """diffusers' forward (``.down_block_res_samples``, ``.mid_block_res_sample``); ``image_encoder_hidden_states``
        as for ``UNet.forward``. Other keyword arguments go to diffusers.
        """
        with self._image_attention_inputs(image_encoder_hidden_states, batch_size=sample.shape[0]):
            return super().forward(
                sample,
                timestep,
                encoder_hidden_states,
                controlnet_cond,
                conditioning_scale=conditioning_scale,
                return_dict=return_dict,
                **kwargs,
            )
