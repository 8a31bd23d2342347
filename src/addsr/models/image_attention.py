"""SeeSR's image cross-attention, added to the cross-attention blocks of diffusers' U-Net and ControlNet.

Every ``CrossAttnDownBlock2D``, ``UNetMidBlock2DCrossAttn`` and ``CrossAttnUpBlock2D`` gets an ``nn.ModuleList``
named ``image_attentions``, parallel to its text ``attentions``: ``Transformer2DModel``s of the same shape whose
cross-attention reads the image embeddings (RAM representation tokens) instead of the text. Each image attention
runs right after the text attention of the same index, on its output. The ordering is done with a forward hook on
each text attention, so diffusers' block code is used unchanged and parameter names match the released weights
(``down_blocks.0.image_attentions.0.transformer_blocks.0.attn2.to_k.weight``, ...).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from os import PathLike
from typing import Any

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_2d_blocks import CrossAttnDownBlock2D, CrossAttnUpBlock2D, UNetMidBlock2DCrossAttn
from torch import nn

logger = logging.getLogger(__name__)

IMAGE_ATTENTION_BLOCK_TYPES = (CrossAttnDownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D)
DEFAULT_IMAGE_CROSS_ATTENTION_DIM = 512


def with_base_init_signature(base: type) -> Callable:
    """Spell out ``base.__init__``'s parameters in the signature of an ``__init__(self, *, ..., **kwargs)``.

    diffusers' ``ConfigMixin`` reads the config keys a class accepts from the signature of its ``__init__``; a
    subclass that forwards ``**kwargs`` to its base must show the base's parameters for ``from_config`` and
    ``from_pretrained`` to pass them on.
    """

    def decorate(init: Callable) -> Callable:
        base_parameters = list(inspect.signature(base.__init__).parameters.values())
        inherited = [
            parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for parameter in base_parameters[1:]
            if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        own = [p for p in inspect.signature(init).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        init.__signature__ = inspect.Signature([base_parameters[0], *inherited, *own])
        return init

    return decorate


def image_attention_like(text_attention: nn.Module, cross_attention_dim: int) -> Transformer2DModel:
    """A ``Transformer2DModel`` like ``text_attention``, cross-attending to ``cross_attention_dim``-wide tokens."""
    if not isinstance(text_attention, Transformer2DModel):
        raise ValueError(
            f"image cross-attention needs Transformer2DModel text attentions, got {type(text_attention).__name__}; "
            "build the model with dual_cross_attention=False"
        )
    config = {key: value for key, value in text_attention.config.items() if not key.startswith("_")}
    return Transformer2DModel(**{**config, "cross_attention_dim": cross_attention_dim})


class _ImageStates:
    """The image embeddings of the forward call in progress, shared by a model's image-attention hooks."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None


class _RunImageAttention:
    """Forward hook on ``block.attentions[index]``: passes its output through ``block.image_attentions[index]``.

    A callable object rather than a closure, so that ``copy.deepcopy`` of a model (e.g. for EMA) points the
    copy's hooks at the copy's modules.
    """

    def __init__(self, block: nn.Module, index: int, states: _ImageStates) -> None:
        self.block = block
        self.index = index
        self.states = states

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        image_states = self.states.value
        if image_states is None:
            raise RuntimeError(
                "an image cross-attention ran outside its model's forward call; call the U-Net or ControlNet "
                "itself with image_encoder_hidden_states rather than one of its blocks"
            )
        hidden_states = output[0] if isinstance(output, tuple) else output.sample
        hidden_states = self.block.image_attentions[self.index](
            hidden_states,
            encoder_hidden_states=image_states,
            attention_mask=kwargs.get("attention_mask"),
            cross_attention_kwargs=kwargs.get("cross_attention_kwargs"),
            return_dict=False,
        )[0]
        return (hidden_states,) if isinstance(output, tuple) else Transformer2DModelOutput(sample=hidden_states)


class ImageCrossAttentionMixin:
    """Adds SeeSR's image cross-attention to a diffusers ``ModelMixin`` with cross-attention blocks.

    The model class calls ``_add_image_attentions`` at the end of ``__init__`` and wraps the body of its forward
    in ``_image_attention_inputs``.
    """

    def _add_image_attentions(self, use_image_cross_attention: bool, image_cross_attention_dim: int) -> None:
        self.register_to_config(
            use_image_cross_attention=use_image_cross_attention, image_cross_attention_dim=image_cross_attention_dim
        )
        self._image_states = _ImageStates()
        if not use_image_cross_attention:
            return
        for _, block in list(self._image_attention_blocks()):  # listed first: the loop adds modules
            block.image_attentions = nn.ModuleList(
                image_attention_like(attention, image_cross_attention_dim) for attention in block.attentions
            )
            for index, attention in enumerate(block.attentions):
                attention.register_forward_hook(_RunImageAttention(block, index, self._image_states), with_kwargs=True)

    def _image_attention_blocks(self) -> Iterator[tuple[str, nn.Module]]:
        for name, module in self.named_modules():
            if isinstance(module, IMAGE_ATTENTION_BLOCK_TYPES):
                yield name, module

    @contextmanager
    def _image_attention_inputs(self, states: torch.Tensor | None, batch_size: int) -> Iterator[None]:
        """Makes the image embeddings ``states`` visible to the image attentions for the duration of a forward call."""
        self._check_image_encoder_hidden_states(states, batch_size)
        self._image_states.value = states
        try:
            yield
        finally:
            self._image_states.value = None

    def _check_image_encoder_hidden_states(self, states: torch.Tensor | None, batch_size: int) -> None:
        name = type(self).__name__
        dim = self.config.image_cross_attention_dim
        if not self.config.use_image_cross_attention:
            if states is not None:
                raise ValueError(
                    f"{name} has no image cross-attention (use_image_cross_attention=False) but got "
                    "image_encoder_hidden_states; drop them or build the model with use_image_cross_attention=True"
                )
            return
        if states is None:
            raise ValueError(
                f"{name} has image cross-attention (use_image_cross_attention=True): pass image_encoder_hidden_states "
                f"of shape (batch, tokens, {dim}), e.g. the RAM image embeddings"
            )
        if states.ndim != 3 or states.shape[0] != batch_size or states.shape[-1] != dim:
            raise ValueError(
                f"image_encoder_hidden_states of {name} must have shape (batch={batch_size}, tokens, {dim}), got "
                f"{tuple(states.shape)}; with classifier-free guidance repeat them for both halves of the batch"
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | PathLike, **kwargs: Any) -> Any:
        """diffusers' loader, plus fresh initialisation of whole image attentions the checkpoint lacks.

        This loads a plain Stable Diffusion ``unet/`` folder with ``use_image_cross_attention=True``: the image
        attentions get PyTorch's default initialisation (diffusers would leave them uninitialised), and a warning
        names them. Any other missing parameter is an error.
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        if loading_info["missing_keys"]:
            model._initialise_missing_image_attentions(set(loading_info["missing_keys"]), pretrained_model_name_or_path)
        return (model, loading_info) if output_loading_info else model

    def _initialise_missing_image_attentions(self, missing_keys: set[str], source: str | PathLike) -> None:
        fresh = []
        for block_name, block in self._image_attention_blocks():
            for index, image_attention in enumerate(getattr(block, "image_attentions", ())):
                prefix = f"{block_name}.image_attentions.{index}"
                keys = {f"{prefix}.{key}" for key in image_attention.state_dict()}
                if not keys <= missing_keys:
                    continue
                text_attention = block.attentions[index]
                new_attention = image_attention_like(text_attention, self.config.image_cross_attention_dim)
                block.image_attentions[index] = new_attention.to(next(text_attention.parameters()))  # device, dtype
                missing_keys -= keys
                fresh.append(prefix)
        if missing_keys:
            raise ValueError(
                f"the checkpoint at {source} lacks parameters of {type(self).__name__} other than whole image "
                f"attentions: {sorted(missing_keys)}; check that the folder matches the config"
            )
        logger.warning(
            "%s: %d image attentions are not in the checkpoint at %s and were newly initialised: %s",
            type(self).__name__, len(fresh), source, ", ".join(fresh),
        )
