"""Inference speed-ups that keep the output: the same arithmetic, computed in fewer operations or a faster layout.

* Nearest-neighbour 2x upsampling followed by a 3x3 convolution (the ``Upsample2D`` of the VAE decoder and U-Net)
  is one transposed convolution with a 4x4 kernel and stride 2: each output pixel reads 2x2 input pixels
  instead of 3x3 upsampled ones, 4/9 of the multiply-adds, and the upsampled tensor is never made.
* Channels-last memory layout for the autoencoders, whose convolutions run faster in it.

Both are applied where they were measured to help: on :data:`MEASURED_DEVICES`, to wide models only
(:data:`WIDE_CHANNELS`, Stable Diffusion's sizes). They change only the order of floating-point sums: outputs agree
with the plain models to float rounding (tests/test_speedups.py), and the narrow shipped small model, left as it
is, keeps its outputs bit for bit. Measured effect: docs/performance.md.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny
from diffusers.models.upsampling import Upsample2D
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file


def upsampling_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The ``[in, out, 4, 4]`` transposed-convolution kernel (stride 2, padding 1) equal to nearest 2x upsampling
    followed by a 3x3 convolution with ``weight`` ``[out, in, 3, 3]`` (padding 1).

    Output row ``2i`` sees input rows ``i - 1`` (tap 0) and ``i`` (taps 1 + 2); row ``2i + 1`` sees rows ``i``
    (taps 0 + 1) and ``i + 1`` (tap 2). In the transposed convolution's indexing (``k = o + 1 - 2r``) that is the
    kernel ``[w2, w1 + w2, w0 + w1, w0]`` along each axis, summed in float32."""

    def along(kernel: torch.Tensor, dim: int) -> torch.Tensor:
        w0, w1, w2 = kernel.unbind(dim)
        return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)

    return along(along(weight.float(), 2), 3).transpose(0, 1).to(weight.dtype)


class TransposedConvUpsample2D(Upsample2D):
    """diffusers' ``Upsample2D`` (nearest 2x, then a 3x3 convolution) run as one transposed convolution. Without
    gradients the kernel is kept until the weight changes (in place, in storage or in dtype); compiled code makes
    it from the weight on every call, since reading a tensor's storage would break the compiled graph."""

    def forward(self, hidden_states: torch.Tensor, output_size: tuple[int, int] | None = None, *args, **kwargs):
        doubled = tuple(2 * side for side in hidden_states.shape[-2:])
        if output_size is not None and tuple(output_size) != doubled:
            return super().forward(hidden_states, output_size, *args, **kwargs)
        return F.conv_transpose2d(hidden_states, self._kernel(), self.conv.bias, stride=2, padding=1)

    def _kernel(self) -> torch.Tensor:
        weight = self.conv.weight
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and weight.requires_grad):
            return upsampling_kernel(weight)
        key = (weight._version, weight.data_ptr(), weight.dtype)
        if getattr(self, "_kernel_key", None) != key:
            self._kernel_key, self._kernel_value = key, upsampling_kernel(weight.detach())
        return self._kernel_value


def _is_nearest_conv3x3(module: nn.Module, min_channels: int) -> bool:
    conv = getattr(module, "conv", None)
    return (
        type(module) is Upsample2D and module.channels >= min_channels and module.use_conv and module.interpolate
        and not module.use_conv_transpose
        and module.norm is None and module.name == "conv" and isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
        and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
    )


def use_transposed_conv_upsampling(model: nn.Module, min_channels: int = 1) -> int:
    """Run every nearest-upsample-then-3x3-conv ``Upsample2D`` of ``model`` with at least ``min_channels`` input
    channels as a transposed convolution (same parameters, same state dict); returns how many were switched."""
    switched = 0
    for module in model.modules():
        if _is_nearest_conv3x3(module, min_channels):
            module.__class__ = TransposedConvUpsample2D
            switched += 1
    return switched


def load_small_decoder(folder: str | Path) -> AutoencoderTiny:
    """An ``AutoencoderTiny`` folder, loaded without diffusers' warning about the ``block_out_channels`` entry its
    own ``save_pretrained`` writes."""
    folder = Path(folder)
    config = {key: value for key, value in AutoencoderTiny.load_config(folder).items() if key != "block_out_channels"}
    model = AutoencoderTiny.from_config(config)
    model.load_state_dict(load_file(folder / SAFETENSORS_WEIGHTS_NAME))
    return model.eval()


MEASURED_DEVICES = ("cpu",)
"""Devices where these speed-ups were measured to help (docs/performance.md); elsewhere models stay as they are."""
WIDE_CHANNELS = 256
"""Upsamplers and autoencoders this wide (Stable Diffusion's VAE and U-Net) get the speed-ups. Narrower upsamplers
(the shipped small model's 64 and 128 channels) were measured slower as a transposed convolution, and the narrow
autoencoders (the shipped model's VAE, at most 128 channels, and small PSR decoders) stay in their layout, which
keeps the shipped model's output bit for bit (channels-last moves its README image by 8-bit rounding steps)."""


def widest_convolution(model: nn.Module) -> int:
    """The most output channels of any 2D convolution in ``model`` (0 without one)."""
    return max((module.out_channels for module in model.modules() if isinstance(module, nn.Conv2d)), default=0)


def speed_up(model: nn.Module, device: torch.device) -> nn.Module:
    """Apply the same-output speed-ups measured on ``device`` to a model of the pipeline: transposed-convolution
    upsampling of wide upsamplers, and channels-last layout for a wide autoencoder (VAE or PSR decoder), whose
    convolutions dominate it (the U-Net and ControlNet were measured no faster in it)."""
    if device.type not in MEASURED_DEVICES:
        return model
    use_transposed_conv_upsampling(model, WIDE_CHANNELS)
    if isinstance(model, (AutoencoderKL, AutoencoderTiny)) and widest_convolution(model) >= WIDE_CHANNELS:
        model.to(memory_format=torch.channels_last)
    return model


def warn_if_slow(device: torch.device, dtype: torch.dtype) -> None:
    """Warn about float16 on a CPU, where it is slow: bfloat16 is the half type CPUs run fast."""
    if device.type == "cpu" and dtype == torch.float16:
        warnings.warn(
            "float16 on a CPU is slow (its matmuls measured 3x slower than bfloat16's, and the VAE stays in float32; "
            "docs/performance.md): use dtype bfloat16 (--dtype bfloat16) for half precision on a CPU, or float32 for "
            "the exact output",
            stacklevel=3,
        )
