"""The evaluation protocol: each method on every input (:mod:`.samples`), metrics, per-image records, the report.

Every step is resumable: an image counts as done for a method when both its SR image and its per-image JSON
record exist (the record is written last, atomically). Metrics added to a later run are computed from the saved SR
images without re-running methods.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..degradations.folder import image_seed
from ..devices import resolve_device
from ..io import load_image, read_image, save_image, save_text, tensor_to_uint8
from ..metrics import MetricSettings, MetricSuite, is_full_reference
from .config import EvalConfig
from .layout import OutputLayout
from .memory import MemoryMeter
from .methods import SuperResolutionMethod, parse_method
from .report import write_report
from .samples import Sample, prepare_samples


class Scorer:
    """The configured metrics; full-reference ones only for samples with an HR image. Suites are built once."""

    def __init__(self, names: Sequence[str], settings: MetricSettings):
        self.names, self.settings = list(names), settings
        self._suites: dict[tuple[str, ...], MetricSuite] = {}

    def names_for(self, has_reference: bool) -> list[str]:
        return [name for name in self.names if has_reference or not is_full_reference(name)]

    def __call__(self, names: Sequence[str], sr: np.ndarray, hr: np.ndarray | None) -> dict[str, dict[str, Any]]:
        key = tuple(names)
        if key not in self._suites:
            self._suites[key] = MetricSuite(key, self.settings)
        return {result.name: result.to_dict() for result in self._suites[key](sr, hr)}


def _uint8(path: Path | None) -> np.ndarray | None:
    return None if path is None else np.asarray(load_image(path))


def _write_record(path: Path, record: dict[str, Any]) -> None:
    save_text(json.dumps(record, indent=2) + "\n", path)


def _claim_out_dir(config: EvalConfig, layout: OutputLayout) -> None:
    """Refuse an output folder made under other protocol numbers; record this run's datasets in it."""
    protocol = config.protocol()
    if layout.protocol.exists():
        previous = json.loads(layout.protocol.read_text(encoding="utf-8"))
        for key in ("crop_size", "scale", "seed"):
            if previous[key] != protocol[key]:
                raise ValueError(f"{layout.root} holds results with {key}={previous[key]}, not {protocol[key]}: "
                                 "use another output folder")
        for name, dataset in protocol["datasets"].items():
            if previous["datasets"].get(name, dataset) != dataset:
                raise ValueError(f"{layout.root} holds dataset {name!r} from {previous['datasets'][name]}, not "
                                 f"{dataset}: use another output folder or dataset name")
        protocol["datasets"] = {**previous["datasets"], **protocol["datasets"]}
    _write_record(layout.protocol, protocol)


@dataclass
class EvalRun:
    """What :func:`evaluate` did and wrote."""

    out_dir: Path
    computed: int
    skipped: int
    records: list[dict[str, Any]]
    outputs: list[Path]


class _Runner:
    """Runs methods over samples, writing SR images and per-image records; skips finished images."""

    def __init__(self, config: EvalConfig, layout: OutputLayout, device: torch.device):
        self.config, self.layout = config, layout
        self.device = device
        self.scorer = Scorer(config.metrics, config.metric_settings)
        self.meter = MemoryMeter(device)

    def finished(self, sample: Sample, method: SuperResolutionMethod) -> dict[str, Any] | None:
        """The sample's record when it is done, with any newly configured metrics added."""
        record_path = self.layout.record(sample.dataset, sample.degradation, method.name, sample.image)
        sr_path = self.layout.sr(sample.dataset, sample.degradation, method.name, sample.image)
        if not (record_path.exists() and sr_path.exists()):
            return None
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record["method_settings"] != method.settings:
            raise ValueError(f"{record_path} was made by {method.name!r} with settings {record['method_settings']}, "
                             f"not {method.settings}: give the method another name or use another output folder")
        missing = [name for name in self.scorer.names_for(sample.hr is not None) if name not in record["metrics"]]
        if missing:
            record["metrics"].update(self.scorer(missing, _uint8(sr_path), _uint8(sample.hr)))
            _write_record(record_path, record)
        return record

    def run(self, sample: Sample, method: SuperResolutionMethod) -> dict[str, Any]:
        lr = read_image(sample.lr).color()
        seed = image_seed(self.config.seed, f"sr/{sample.dataset}/{sample.degradation}/{sample.image}")
        with self.meter.measure() as measurement:
            sr = method.upscale(lr, seed)
        expected = (1, 3, lr.shape[-2] * method.scale, lr.shape[-1] * method.scale)
        if tuple(sr.shape) != expected:
            raise ValueError(f"Method {method.name!r} returned shape {tuple(sr.shape)} for {sample.lr}; "
                             f"expected {expected}")
        sr_uint8 = tensor_to_uint8(sr)[0]
        save_image(Image.fromarray(sr_uint8), self.layout.sr(sample.dataset, sample.degradation, method.name,
                                                             sample.image))
        record = {
            "dataset": sample.dataset, "degradation": sample.degradation, "method": method.name,
            "image": sample.image, "source": str(sample.source), "lr_size": list(lr.shape[-2:]),
            "seed": seed, "seconds": measurement.seconds, "peak_memory_bytes": measurement.peak_bytes,
            "memory_measure": self.meter.kind, "device": str(self.device), "method_settings": method.settings,
            "metrics": self.scorer(self.scorer.names_for(sample.hr is not None), sr_uint8, _uint8(sample.hr)),
        }
        _write_record(self.layout.record(sample.dataset, sample.degradation, method.name, sample.image), record)
        return record

    def run_method(self, samples: list[Sample], method: SuperResolutionMethod, bar: tqdm) -> tuple[list, int]:
        """Records of every sample and how many were computed now."""
        records = {sample: self.finished(sample, method) for sample in samples}
        bar.update(sum(record is not None for record in records.values()))
        todo = [sample for sample, record in records.items() if record is None]
        if todo:
            bar.set_postfix_str(method.name)
            with self.meter.loading():
                method.load()
            for sample in todo:
                records[sample] = self.run(sample, method)
                bar.update()
            method.unload()
        return list(records.values()), len(todo)


def evaluate(config: EvalConfig, methods: Sequence[SuperResolutionMethod] | None = None) -> EvalRun:
    """Run the protocol for every method (default: built from ``config.methods``) and write the report.

    Writes under ``config.out_dir`` the files of :class:`~addsr.evaluation.layout.OutputLayout`; images already
    done there are skipped."""
    config.check_datasets()
    layout = OutputLayout(config.out_dir)
    device = resolve_device(config.device)
    if methods is None:
        methods = [parse_method(spec, config.scale, device, config.dtype) for spec in config.methods]
    names = [method.name for method in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"Method names must be unique, got {names}: add ',name=...' to tell them apart")
    mismatched = [method.name for method in methods if method.scale != config.scale]
    if mismatched:
        raise ValueError(f"Methods {mismatched} do not upscale x{config.scale} as this evaluation does")
    _claim_out_dir(config, layout)
    samples = prepare_samples(config, layout)
    runner = _Runner(config, layout, device)
    records, computed = [], 0
    with tqdm(total=len(samples) * len(methods), desc="Evaluating", unit="image", disable=not config.progress) as bar:
        for method in methods:
            method_records, method_computed = runner.run_method(samples, method, bar)
            records += method_records
            computed += method_computed
    outputs = write_report(config, layout, methods, samples, records)
    return EvalRun(config.out_dir, computed, len(records) - computed, records, outputs)
