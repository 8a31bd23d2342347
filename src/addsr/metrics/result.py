"""A metric value together with what produced it."""

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class MetricResult:
    """One number, the implementation that computed it and the settings it used."""

    name: str
    value: float
    implementation: str
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """E.g. ``psnr = 24.1234 [addsr.metrics.psnr; crop_border=4, test_y_channel=True]``."""
        settings = ", ".join(f"{key}={value}" for key, value in self.settings.items())
        return f"{self.name} = {self.value:.4f} [{self.implementation}; {settings}]"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
