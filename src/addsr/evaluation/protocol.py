"""The evaluation protocol: HR crops, the paper's degradations, inference, metrics and per-image records.

Crop rule: each side of an HR image is centre-cropped to ``min(crop_size, side rounded down to a multiple of
scale)``, so a 512x512 crop where the image allows it and otherwise the largest centred crop the x4 degradation
divides exactly; nothing is padded, so no padding enters the metrics. Real-world LR images follow the same rule at
LR size (``crop_size / scale``, any side length).

Every step is resumable: HR crops and LR inputs are cached as PNG (8-bit, as the degradations round), and an image
counts as done for a method when both its SR image and its per-image JSON record exist (the record is written
last, atomically). Metrics added to a later run are computed from the saved SR images without re-running methods.
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

from ..degradations import paper_degradation
from ..degradations.folder import image_seed
from ..devices import resolve_device
from ..io import (
    NoImagesError, find_images, load_image, read_image, save_image, save_text, tensor_to_pil, tensor_to_uint8,
)
from ..metrics import MetricSettings, MetricSuite, is_full_reference
from .config import SYNTHETIC, DatasetSpec, EvalConfig
from .layout import OutputLayout
from .memory import MemoryMeter
from .methods import SuperResolutionMethod, parse_method


def crop_shape(height: int, width: int, crop_size: int, multiple: int) -> tuple[int, int]:
    """The crop rule: each side ``min(crop_size, side rounded down to a multiple of multiple)``."""
    return min(crop_size, height - height % multiple), min(crop_size, width - width % multiple)


def center_crop(image: torch.Tensor, crop_size: int, multiple: int) -> torch.Tensor:
    """The centred crop of ``[..., H, W]`` that :func:`crop_shape` gives."""
    height, width = image.shape[-2:]
    crop_h, crop_w = crop_shape(height, width, crop_size, multiple)
    if crop_h == 0 or crop_w == 0:
        raise ValueError(f"is {width}x{height}, too small for a side divisible by {multiple}")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image[..., top : top + crop_h, left : left + crop_w]


@dataclass(frozen=True)
class Sample:
    """One LR input of the protocol, with its HR reference when it has one."""

    dataset: str
    degradation: str
    image: str
    source: Path
    lr: Path
    hr: Path | None


def _sources(dataset: DatasetSpec) -> list[Path]:
    if not dataset.path.is_dir():
        raise ValueError(f"Dataset {dataset.name!r}: {dataset.path} does not exist or is not a folder")
    sources = find_images([dataset.path])
    if not sources:
        raise ValueError(f"Dataset {dataset.name!r}: {NoImagesError([dataset.path])}")
    stems = [path.stem for path in sources]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise ValueError(f"Dataset {dataset.name!r}: images differ only by suffix ({', '.join(duplicates)}); "
                         "rename them so that outputs do not collide")
    return sources


def _load_cropped(source: Path, crop_size: int, multiple: int) -> torch.Tensor:
    try:
        return center_crop(read_image(source).color(), crop_size, multiple)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _prepare_synthetic(dataset: DatasetSpec, config: EvalConfig, layout: OutputLayout) -> list[Sample]:
    samples = []
    for source in _sources(dataset):
        stem = source.stem
        hr_path = layout.hr(dataset.name, stem)
        lr_paths = {kind: layout.lr(dataset.name, kind, stem) for kind in config.degradations}
        missing = [kind for kind, path in lr_paths.items() if not path.exists()]
        if missing or not hr_path.exists():
            hr = _load_cropped(source, config.crop_size, config.scale)
            save_image(tensor_to_pil(hr)[0], hr_path)
            for kind in missing:
                generator = torch.Generator().manual_seed(image_seed(config.seed, f"{dataset.name}/{kind}/{stem}"))
                lr = paper_degradation(hr, kind, generator, config.scale)
                save_image(tensor_to_pil(lr)[0], lr_paths[kind])
        samples += [Sample(dataset.name, kind, stem, source, lr_paths[kind], hr_path) for kind in config.degradations]
    return samples


def _prepare_real(dataset: DatasetSpec, config: EvalConfig, layout: OutputLayout) -> list[Sample]:
    (degradation,) = dataset.degradations(config.degradations)
    samples = []
    for source in _sources(dataset):
        lr_path = layout.lr(dataset.name, degradation, source.stem)
        if not lr_path.exists():
            save_image(tensor_to_pil(_load_cropped(source, config.crop_size // config.scale, 1))[0], lr_path)
        samples.append(Sample(dataset.name, degradation, source.stem, source, lr_path, None))
    return samples


def prepare_samples(config: EvalConfig, layout: OutputLayout) -> list[Sample]:
    """Crop (and degrade) every dataset image once into ``layout``; samples ordered by dataset, degradation, image."""
    samples = []
    for dataset in config.datasets:
        prepare = _prepare_synthetic if dataset.kind == SYNTHETIC else _prepare_real
        by_image = prepare(dataset, config, layout)
        order = {kind: index for index, kind in enumerate(dataset.degradations(config.degradations))}
        samples += sorted(by_image, key=lambda sample: order[sample.degradation])
    return samples


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
    from .report import write_report

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
