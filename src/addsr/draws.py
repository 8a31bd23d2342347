"""Random draws from an explicit ``torch.Generator``, for degradations and training alike.

Every draw is made on the generator's device (the default device's RNG when no generator is given) and then moved
to ``device``, so one CPU generator gives the same parameters whatever device the images are on.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _rng_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def uniform(
    low: float, high: float, count: int, generator: torch.Generator | None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``count`` float32 values uniform in ``[low, high)``."""
    device = torch.device(device)
    values = torch.rand(count, generator=generator, device=_rng_device(generator, device))
    return (low + (high - low) * values).to(device)


def bernoulli(
    probability: float, count: int, generator: torch.Generator | None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``count`` booleans, each true with ``probability``."""
    return uniform(0.0, 1.0, count, generator, device) < probability


def categorical(
    probabilities: Sequence[float], count: int, generator: torch.Generator | None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``count`` indices drawn with the given probabilities."""
    device = torch.device(device)
    weights = torch.tensor(probabilities, dtype=torch.float64, device=_rng_device(generator, device))
    return torch.multinomial(weights, count, replacement=True, generator=generator).to(device)


def choice(options: Sequence, probabilities: Sequence[float] | None, generator: torch.Generator | None):
    """One of ``options`` (uniformly when ``probabilities`` is None)."""
    probabilities = probabilities if probabilities is not None else [1.0] * len(options)
    return options[int(categorical(probabilities, 1, generator).item())]


def randint(
    low: int, high: int, shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Integers uniform in ``[low, high)``."""
    device = torch.device(device)
    return torch.randint(low, high, tuple(shape), generator=generator, device=_rng_device(generator, device)).to(device)


def normal(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal float32 values of ``shape``."""
    device = torch.device(device)
    return torch.randn(tuple(shape), generator=generator, device=_rng_device(generator, device)).to(device)


def poisson(rates: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Poisson counts with the given rates, on the rates' device."""
    return torch.poisson(rates.to(_rng_device(generator, rates.device)), generator=generator).to(rates.device)
