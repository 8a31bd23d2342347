"""What an evaluation runs: datasets, degradations, methods, metrics and the protocol's numbers, loaded like
every configuration (:mod:`addsr.config`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, merge_config, parse_overrides, read_config_file
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

    datasets: list[DatasetSpec] = field(default_factory=list)
    """In a config file: a mapping of names to folders or to ``{path: ..., kind: synthetic|real}``."""
    out_dir: Path = Path("eval")
    methods: list[str] = field(default_factory=lambda: ["bicubic", "lanczos"])
    degradations: list[str] = field(default_factory=lambda: list(PAPER_DEGRADATIONS))
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "niqe"])
    crop_size: int = 512
    """HR crop; LR inputs are ``crop_size / scale``."""
    scale: int = 4
    seed: int = 0
    device: str = "auto"
    """Of methods built from specs; learned metrics use ``metric_settings.device``."""
    dtype: str = "auto"
    grid_images: int = 1
    """Images per grid (the first ones of the dataset, by file name); 0: no grids."""
    grid_crop: int = 128
    """Side of the HR-size patch shown in the grids, from the image centre."""
    metric_settings: MetricSettings = field(default_factory=MetricSettings)
    progress: bool = True

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
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

    def check_datasets(self) -> None:
        """A run needs at least one dataset (a config may leave them to the command line)."""
        if not self.datasets:
            raise ValueError("No datasets to evaluate: give at least one folder")

    def protocol(self) -> dict[str, Any]:
        """The numbers that determine the inputs; an output folder holds results of one protocol only."""
        return {
            "crop_size": self.crop_size, "scale": self.scale, "seed": self.seed,
            "datasets": {dataset.name: {"path": str(dataset.path.resolve()), "kind": dataset.kind}
                         for dataset in self.datasets},
        }


def _dataset(name: str, entry: Any, source: str) -> DatasetSpec:
    if isinstance(entry, (str, Path)):
        return DatasetSpec(name, Path(entry))
    if isinstance(entry, Mapping) and "path" in entry and set(entry) <= {"path", "kind"}:
        return DatasetSpec(name, Path(entry["path"]), entry.get("kind", SYNTHETIC))
    raise ConfigError(f"{source}: dataset {name!r}: expected a path or {{path: ..., kind: synthetic|real}}, "
                      f"got {entry!r}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), **values: Any) -> EvalConfig:
    """An :class:`EvalConfig` (:mod:`addsr.config`): its defaults, then the YAML or TOML file at ``path``, then
    ``values`` (field values, ``None`` ones ignored: the command line's shortcut options), then ``--set``
    ``overrides``. ``datasets`` maps names to folders or to ``{path, kind}``; the datasets of each source are added
    to those before (a name given again is replaced). Relative paths are taken from the current folder."""
    config = EvalConfig()
    for source, data in (
        (str(path), read_config_file(path) if path is not None else {}),
        ("options", {key: value for key, value in values.items() if value is not None}),
        ("--set", parse_overrides(overrides)),
    ):
        datasets = data.pop("datasets", None) or {}
        if not isinstance(datasets, Mapping):
            raise ConfigError(f"{source}: 'datasets' must map dataset names to folders")
        config = merge_config(config, data, source)
        if datasets:
            named = {dataset.name: dataset for dataset in config.datasets}
            named |= {name: _dataset(name, entry, source) for name, entry in datasets.items()}
            config = dataclasses.replace(config, datasets=list(named.values()))
    return config
