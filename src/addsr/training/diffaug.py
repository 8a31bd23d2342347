"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to real and fake images before the
discriminator. AddSR uses translation and cutout."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..draws import randint


def random_translation(
    images: torch.Tensor, ratio: float = 0.125, fill: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Shift each image by a random whole number of pixels, up to ``ratio`` of its size, filling with ``fill``."""
    batch, _, height, width = images.shape
    max_dy, max_dx = int(height * ratio + 0.5), int(width * ratio + 0.5)
    dy = randint(-max_dy, max_dy + 1, (batch, 1), generator, images.device)
    dx = randint(-max_dx, max_dx + 1, (batch, 1), generator, images.device)
    # Index into a copy padded by one pixel of ``fill``; sources outside the image land on the padding.
    padded = F.pad(images, (1, 1, 1, 1), value=fill)
    rows = (torch.arange(height, device=images.device) + dy + 1).clamp(0, height + 1)
    cols = (torch.arange(width, device=images.device) + dx + 1).clamp(0, width + 1)
    samples = torch.arange(batch, device=images.device)[:, None, None]
    shifted = padded.permute(0, 2, 3, 1)[samples, rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2)


def random_cutout(
    images: torch.Tensor, ratio: float = 0.2, fill: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Set one randomly placed rectangle of ``ratio`` times the image size per image to ``fill``; the rectangle's
    centre is anywhere in the image, so it may be clipped at the border."""
    batch, _, height, width = images.shape
    cut_h, cut_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = randint(0, height + 1 - cut_h % 2, (batch, 1), generator, images.device) - cut_h // 2
    left = randint(0, width + 1 - cut_w % 2, (batch, 1), generator, images.device) - cut_w // 2
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    in_rows = (rows >= top) & (rows < top + cut_h)
    in_cols = (cols >= left) & (cols < left + cut_w)
    cut = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
    return images.masked_fill(cut, fill)


AUGMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "translation": random_translation,
    "cutout": random_cutout,
}


def diff_augment(
    images: torch.Tensor,
    policy: Sequence[str] = ("translation", "cutout"),
    fill: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply the augmentations named in ``policy``, in order, with fresh random parameters per image."""
    for name in policy:
        if name not in AUGMENTATIONS:
            raise ValueError(f"Unknown DiffAugment augmentation {name!r}; choose from {sorted(AUGMENTATIONS)}")
        images = AUGMENTATIONS[name](images, fill=fill, generator=generator)
    return images
