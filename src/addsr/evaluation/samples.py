"""The evaluation's inputs: HR crops and the paper's degradations of them, or crops of real-world LR images.

Crop rule: each side of an HR image is centre-cropped to ``min(crop_size, side rounded down to a multiple of
scale)``, so a 512x512 crop where the image allows it and otherwise the largest centred crop the x4 degradation
divides exactly; nothing is padded, so no padding enters the metrics. Real-world LR images follow the same rule at
LR size (``crop_size / scale``, any side length). Crops and LR inputs are cached as PNG (8-bit, as the
degradations round) and reused by later runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..degradations import paper_degradation
from ..degradations.folder import image_seed
from ..io import NoImagesError, find_images, read_image, save_image, tensor_to_pil
from .config import SYNTHETIC, DatasetSpec, EvalConfig
from .layout import OutputLayout


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
