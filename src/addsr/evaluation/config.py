"""What an evaluation runs: datasets, degradations, methods, metrics and the protocol's numbers."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..degradations import PAPER_DEGRADATIONS
from ..metrics import MetricSettings, available_metrics

SYNTHETIC = "synthetic"
REAL = "real"
DATASET_KINDS = (SYNTHETIC, REAL)
REAL_DEGRADATION = "real"
"""The degradation label of real-world LR datasets, which are measured as they are."""
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass
class DatasetSpec:
    """A folder of HR images (``synthetic``: cropped and degraded here) or of real-world LR images (``real``: no
    reference, so no-reference metrics only)."""

    name: str
    path: Path
    kind: str = SYNTHETIC

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not DATASET_NAME.fullmatch(self.name):
            raise ValueError(f"Dataset name {self.name!r} is not usable as a folder name: use letters, digits, "
                             "'.', '_', '+' or '-'")
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"Dataset {self.name!r} has kind {self.kind!r}; choose one of {', '.join(DATASET_KINDS)}")

    def degradations(self, configured: list[str]) -> list[str]:
        return list(configured) if self.kind == SYNTHETIC else [REAL_DEGRADATION]


@dataclass
class EvalConfig:
    """One evaluation run. ``methods`` are specs for :func:`addsr.evaluation.parse_method`."""

    datasets: list[DatasetSpec]
    out_dir: Path = Path("eval")
    methods: list[str] = field(default_factory=lambda: ["bicubic", "lanczos"])
    degradations: list[str] = field(default_factory=lambda: list(PAPER_DEGRADATIONS))
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "niqe"])
    crop_size: int = 512  # HR crop; LR inputs are crop_size / scale
    scale: int = 4
    seed: int = 0
    device: str = "auto"  # methods built from specs; learned metrics use metric_settings.device
    dtype: str = "auto"
    grid_images: int = 1  # images per grid (the first ones of the dataset, by file name); 0: no grids
    grid_crop: int = 128  # side of the HR-size patch shown in the grids, from the image centre
    metric_settings: MetricSettings = field(default_factory=MetricSettings)
    progress: bool = True

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if not self.datasets:
            raise ValueError("No datasets to evaluate: give at least one folder")
        if self.grid_images < 0:
            raise ValueError(f"grid_images must be 0 (no grids) or more, got {self.grid_images}")
        names = [dataset.name for dataset in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"Dataset names must be unique, got {names}")
        if self.scale < 1 or self.crop_size < self.scale or self.crop_size % self.scale:
            raise ValueError(f"crop_size ({self.crop_size}) must be a positive multiple of scale ({self.scale})")
        unknown = [name for name in self.degradations if name not in PAPER_DEGRADATIONS]
        if unknown or not self.degradations:
            raise ValueError(f"Degradations {unknown or '[]'} are not among {', '.join(PAPER_DEGRADATIONS)}")
        unknown = [name for name in self.metrics if name not in available_metrics()]
        if unknown:
            raise ValueError(f"Unknown metrics {unknown}; choose from {', '.join(available_metrics())}")
        if not self.methods:
            raise ValueError("No methods to evaluate")

    def protocol(self) -> dict[str, Any]:
        """The numbers that determine the inputs; an output folder holds results of one protocol only."""
        return {
            "crop_size": self.crop_size, "scale": self.scale, "seed": self.seed,
            "datasets": {dataset.name: {"path": str(dataset.path.resolve()), "kind": dataset.kind}
                         for dataset in self.datasets},
        }


def _dataset(name: str, entry: Any) -> DatasetSpec:
    if isinstance(entry, (str, Path)):
        return DatasetSpec(name, Path(entry))
    if isinstance(entry, dict) and "path" in entry and set(entry) <= {"path", "kind"}:
        return DatasetSpec(name, Path(entry["path"]), entry.get("kind", SYNTHETIC))
    raise ValueError(f"Dataset {name!r}: expected a path or {{path: ..., kind: synthetic|real}}, got {entry!r}")


def load_config(path: str | Path, **overrides: Any) -> EvalConfig:
    """An :class:`EvalConfig` from a YAML file (keys as its fields; ``datasets`` maps names to paths or to
    ``{path, kind}``; ``metric_settings`` maps :class:`~addsr.metrics.MetricSettings` fields). Relative paths are
    taken from the current folder. ``overrides`` replace file values (``None`` values are ignored)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of EvalConfig fields at the top level")
    data.update({key: value for key, value in overrides.items() if value is not None})
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; expected some of {sorted(known)}")
    datasets = data.pop("datasets", None)
    if not isinstance(datasets, dict):
        raise ValueError(f"{path}: 'datasets' must map dataset names to folders")
    metric_settings = data.pop("metric_settings", {}) or {}
    if isinstance(metric_settings, dict):
        known_settings = {f.name for f in dataclasses.fields(MetricSettings)}
        if set(metric_settings) - known_settings:
            raise ValueError(f"{path}: unknown metric_settings {sorted(set(metric_settings) - known_settings)}; "
                             f"expected some of {sorted(known_settings)}")
        metric_settings = MetricSettings(**metric_settings)
    return EvalConfig(datasets=[_dataset(name, entry) for name, entry in datasets.items()],
                      metric_settings=metric_settings, **data)
