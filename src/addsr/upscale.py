"""Upscaling image files: one image at a time, every failure reported, outputs written atomically."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from .io import ImageReadError, find_images, load_image, save_image, save_text
from .pipeline import DEFAULT_ADDED_PROMPT, AddSRPipeline


@dataclass
class UpscaleSettings:
    """How to run the pipeline on each file."""

    num_steps: int = 4
    psr_weight: float = 0.4
    prompt: str = ""
    added_prompt: str = DEFAULT_ADDED_PROMPT
    color_fix: str | None = None
    """None: the model's own (``AddSRPipeline.default_color_fix``); likewise ``wavelet_levels``."""
    wavelet_levels: int | None = None
    guidance_scale: float = 0.0
    seed: int | None = None
    save_prompt: bool = False


@dataclass
class UpscaleReport:
    """What was written and what failed (path, one-line reason)."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def output_path(source: Path, out_dir: Path) -> Path:
    return out_dir / f"{source.stem}.png"


def upscale_files(
    pipe: AddSRPipeline,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    settings: UpscaleSettings | None = None,
    progress: bool = True,
) -> UpscaleReport:
    """Upscale every image in ``inputs`` (files or folders) into ``out_dir`` as PNG, with the prompt used beside
    it when ``settings.save_prompt``. A bad input is recorded in the report and the others still run."""
    settings = settings or UpscaleSettings()
    out_dir = Path(out_dir)
    report = UpscaleReport()
    claimed: dict[Path, Path] = {}
    pipe.progress_bar = False
    for source in tqdm(find_images(inputs), desc="Upscaling", unit="image", disable=not progress):
        target = output_path(source, out_dir)
        if target in claimed:
            report.failed.append((source, f"same output name as {claimed[target]}; rename one of them"))
            continue
        claimed[target] = source
        try:
            image = load_image(source)
        except ImageReadError as error:
            report.failed.append((source, error.reason))
            continue
        generator = torch.Generator().manual_seed(settings.seed) if settings.seed is not None else None
        try:
            result = pipe(
                image, prompt=settings.prompt, added_prompt=settings.added_prompt, num_steps=settings.num_steps,
                psr_weight=settings.psr_weight, color_fix=settings.color_fix,
                wavelet_levels=settings.wavelet_levels, guidance_scale=settings.guidance_scale,
                generator=generator,
            )
        except (torch.OutOfMemoryError, MemoryError):
            width, height = image.size
            report.failed.append((source, f"{width}x{height} is too large for {pipe.device}'s memory (large "
                                          "images are not tiled yet); try a smaller image or another device"))
            continue
        report.written.append(save_image(result.images[0], target))
        if settings.save_prompt:
            save_text(result.prompts[0], target.with_suffix(".txt"))
    return report
