"""Benchmarking super-resolution methods under the paper's protocol (``addsr eval``).

From folders of HR images: centre crops, the four synthetic degradations, each method's output, full- and
no-reference metrics; real-world LR folders get no-reference metrics only. Writes per-image JSON records, Markdown
and CSV tables in the paper's layout, image grids and a perception-distortion plot; runs are resumable.
"""

from .config import DATASET_KINDS, REAL, REAL_DEGRADATION, SYNTHETIC, DatasetSpec, EvalConfig, load_config
from .layout import OutputLayout
from .memory import MemoryMeter
from .methods import (
    METHOD_SPEC_HELP,
    AddSRMethod,
    InterpolationMethod,
    SpandrelMethod,
    SuperResolutionMethod,
    parse_method,
)
from .protocol import EvalRun, evaluate
from .report import best_methods, table_rows, write_report
from .samples import Sample, center_crop, crop_shape, prepare_samples

__all__ = [
    "AddSRMethod",
    "DATASET_KINDS",
    "DatasetSpec",
    "EvalConfig",
    "EvalRun",
    "InterpolationMethod",
    "METHOD_SPEC_HELP",
    "MemoryMeter",
    "OutputLayout",
    "REAL",
    "REAL_DEGRADATION",
    "SYNTHETIC",
    "Sample",
    "SpandrelMethod",
    "SuperResolutionMethod",
    "best_methods",
    "center_crop",
    "crop_shape",
    "evaluate",
    "load_config",
    "parse_method",
    "prepare_samples",
    "table_rows",
    "write_report",
]
