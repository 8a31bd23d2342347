"""Where an evaluation run keeps its files, all under one output folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OutputLayout:
    """Paths of every file an evaluation run writes under ``root``.

    ::

        hr/{dataset}/{image}.png                          HR crops (synthetic datasets)
        lr/{dataset}/{degradation}/{image}.png            LR inputs (degraded HR crops, or real LR crops)
        sr/{dataset}/{degradation}/{method}/{image}.png   super-resolved outputs
        per_image/{dataset}/{degradation}/{method}/{image}.json
        grids/{dataset}_{degradation}.png
        results.md, results.csv, perception_distortion.png, protocol.json
    """

    root: Path

    def hr(self, dataset: str, image: str) -> Path:
        return self.root / "hr" / dataset / f"{image}.png"

    def lr(self, dataset: str, degradation: str, image: str) -> Path:
        return self.root / "lr" / dataset / degradation / f"{image}.png"

    def sr(self, dataset: str, degradation: str, method: str, image: str) -> Path:
        return self.root / "sr" / dataset / degradation / method / f"{image}.png"

    def record(self, dataset: str, degradation: str, method: str, image: str) -> Path:
        return self.root / "per_image" / dataset / degradation / method / f"{image}.json"

    def grid(self, dataset: str, degradation: str) -> Path:
        return self.root / "grids" / f"{dataset}_{degradation}.png"

    @property
    def table_markdown(self) -> Path:
        return self.root / "results.md"

    @property
    def table_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def scatter(self) -> Path:
        return self.root / "perception_distortion.png"

    @property
    def protocol(self) -> Path:
        return self.root / "protocol.json"
