"""The interface the pipeline expects from an image tagger."""

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Tagger(Protocol):
    """Gives text tags and image embeddings for a batch of images.

    ``images`` is a float tensor ``[B, 3, H, W]`` in ``[0, 1]``. A tagger resizes it to its own
    input size (RAM: 384x384, bilinear) unless it already has that size, then normalises it. The
    pipeline resizes images to ``input_size`` itself, as the released code does.
    """

    input_size: int

    def tags(self, images: torch.Tensor) -> list[str]:
        """One comma-separated tag string per image."""
        ...

    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[B, N, D]`` for the image cross-attention (RAM: N=145, D=512)."""
        ...


def tags_and_embeddings(tagger: Tagger, images: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """``tagger.tags(images)`` and ``tagger.embeddings(images)``, from one pass through the tagger when it offers
    ``tags_and_embeddings(images)`` (RAM does: its tags are read from its embeddings), else from two calls."""
    both = getattr(tagger, "tags_and_embeddings", None)
    if both is not None:
        return both(images)
    return tagger.tags(images), tagger.embeddings(images)
