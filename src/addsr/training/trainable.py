"""Which student parameters TA-ADD trains."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

DEFAULT_TRAINABLE: tuple[str, ...] = (
    "unet.image_attentions",
    "controlnet.image_attentions",
    "controlnet.controlnet_cond_embedding",
)
"""The released training's set: the image cross-attentions of both networks and the ControlNet's condition
embedding."""


def trainable_parameters(
    unet: nn.Module, controlnet: nn.Module, names: Sequence[str] = DEFAULT_TRAINABLE
) -> dict[str, nn.Parameter]:
    """Parameters selected by ``names``, keyed ``unet.<name>`` / ``controlnet.<name>``.

    Each pattern is ``"<model>.<substring>"``: it selects the parameters of ``unet`` or ``controlnet`` whose name
    contains ``<substring>`` (``"unet.image_attentions"`` matches ``down_blocks.0.image_attentions.0.…``).
    """
    models = {"unet": unet, "controlnet": controlnet}
    selected: dict[str, nn.Parameter] = {}
    for pattern in names:
        model_name, _, substring = pattern.partition(".")
        if model_name not in models or not substring:
            raise ValueError(
                f"Trainable pattern {pattern!r} must look like 'unet.<substring>' or 'controlnet.<substring>'"
            )
        matches = {
            f"{model_name}.{name}": parameter
            for name, parameter in models[model_name].named_parameters()
            if substring in name
        }
        if not matches:
            raise ValueError(
                f"Trainable pattern {pattern!r} matches no parameter of the student {model_name}; use a substring of "
                "its parameter names, e.g. 'image_attentions' or 'controlnet_cond_embedding'"
            )
        selected |= matches
    return selected


def freeze_all_but(
    unet: nn.Module, controlnet: nn.Module, names: Sequence[str] = DEFAULT_TRAINABLE
) -> list[nn.Parameter]:
    """Freeze the student except the parameters matching ``names`` (see :func:`trainable_parameters`); return those."""
    selected = trainable_parameters(unet, controlnet, names)
    unet.requires_grad_(False)
    controlnet.requires_grad_(False)
    for parameter in selected.values():
        parameter.requires_grad_(True)
    return list(selected.values())
