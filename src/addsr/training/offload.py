"""Frozen models kept on the CPU between uses, so that the accelerator's memory goes to the trained models."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

from ..tagging import Tagger, tags_and_embeddings

CPU = torch.device("cpu")


@contextmanager
def on_device(modules: Sequence[object], device: torch.device) -> Iterator[None]:
    """Move the ``nn.Module``s among ``modules`` to ``device`` for the block, then back to the CPU."""
    modules = [module for module in modules if isinstance(module, nn.Module)]
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to(CPU)


class OffloadedTagger:
    """A tagger that lives on the CPU and runs on ``device``: it is moved there for each call and back after it."""

    def __init__(self, tagger: Tagger, device: torch.device):
        self.tagger = tagger
        self.device = device
        self.input_size = tagger.input_size

    def tags(self, images: torch.Tensor) -> list[str]:
        with on_device([self.tagger], self.device):
            return self.tagger.tags(images)

    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        with on_device([self.tagger], self.device):
            return self.tagger.embeddings(images)

    def tags_and_embeddings(self, images: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        with on_device([self.tagger], self.device):
            return tags_and_embeddings(self.tagger, images)
