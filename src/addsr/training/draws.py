"""Random draws from an explicit ``torch.Generator``, made on the generator's device and moved to ``device``
(so a CPU generator gives the same draws whatever device the tensors are on)."""

from __future__ import annotations

import torch


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def rand(count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``count`` float32 values uniform in ``[0, 1)``."""
    return torch.rand(count, generator=generator, device=_draw_device(generator, device)).to(device)


def randint(
    low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Integers uniform in ``[low, high)``."""
    return torch.randint(low, high, shape, generator=generator, device=_draw_device(generator, device)).to(device)
