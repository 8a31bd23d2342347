"""Exponential moving average of the trained parameters (the released training's EMA, decay 0.99)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn as nn


class ExponentialMovingAverage:
    """``shadow = decay * shadow + (1 - decay) * parameter`` after every optimiser step, from the initial weights
    and with a constant decay (no warm-up), kept in float32."""

    def __init__(self, parameters: Mapping[str, nn.Parameter], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.parameters = dict(parameters)
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in self.parameters.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, parameter in self.parameters.items():
            self.shadow[name].lerp_(parameter.detach().float(), 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily give the parameters the averaged values (in place, so model wrappers see them)."""
        backup = {name: p.detach().clone() for name, p in self.parameters.items()}
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, parameter in self.parameters.items():
                    parameter.copy_(backup[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing, unexpected = set(self.shadow) - set(state), set(state) - set(self.shadow)
        if missing or unexpected:
            raise ValueError(
                f"The EMA state does not match the trainable parameters: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]} (was the checkpoint made with another trainable set?)"
            )
        for name, value in state.items():
            self.shadow[name].copy_(value)
