"""Upscaling image files as they are (alpha, 16 bits, grey, orientation, colour profile), one file at a time, and
batches that finish: every failure reported, nothing half-written, existing outputs skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from .io import (
    DEFAULT_MAX_PIXELS, IMAGE_FORMATS, OUTPUT_FORMATS, ImageFileError, NoImagesError, check_writable, find_images,
    read_image, resize_images, save_text, to_grayscale, write_image,
)
from .pipeline import AddSRPipeline
from .sampling import SamplerSettings

ALPHA_MODES = ("bicubic", "model")
OUTPUT_EXTENSIONS = ("png", "jpg", "webp", "tif", "same")


@dataclass
class UpscaleSettings:
    """How each file is upscaled: the sampler's settings and seed, how alpha is upscaled, and how files are read and
    written."""

    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    seed: int | None = None
    alpha: str = "bicubic"
    """How an alpha channel is upscaled: ``bicubic``, or ``model`` (run through the pipeline as a grey image)."""
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    """Larger inputs are refused (decompression bombs); None: no limit."""
    quality: int = 95
    """JPEG and WebP quality, 1 to 100."""
    save_prompt: bool = False

    def __post_init__(self) -> None:
        if self.alpha not in ALPHA_MODES:
            raise ValueError(f"alpha must be one of {', '.join(ALPHA_MODES)}, got {self.alpha!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be 1 to 100, got {self.quality}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive or None (no limit), got {self.max_pixels}")


@dataclass
class BatchSettings:
    """Which files a batch writes: format, name and folders of the outputs, and whether existing ones are replaced."""

    ext: str = "png"
    """Output format: png, jpg, webp, tif, or ``same`` as the input (PNG where the input's cannot be written)."""
    suffix: str = ""
    """Added to each output's name, before the extension (e.g. ``_x4``)."""
    overwrite: bool = False
    """Replace existing outputs; otherwise they are skipped, so that an interrupted batch resumes."""
    recursive: bool = False
    """Search folders' subfolders too, and keep their tree under the output folder."""

    def __post_init__(self) -> None:
        if self.ext not in OUTPUT_EXTENSIONS:
            raise ValueError(f"ext must be one of {', '.join(OUTPUT_EXTENSIONS)}, got {self.ext!r}")
        if "/" in self.suffix or "\\" in self.suffix:
            raise ValueError(f"suffix is part of a file name and cannot hold a path separator, got {self.suffix!r}")


@dataclass
class UpscaleResult:
    """One file written: where, the prompt used, and warnings (such as frames left out)."""

    source: Path
    target: Path
    prompt: str
    warnings: list[str] = field(default_factory=list)


@dataclass
class UpscaleReport:
    """What a batch wrote, skipped (outputs already there) and failed (path, one-line reason), and its warnings."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[tuple[Path, str]] = field(default_factory=list)

    def extend(self, other: UpscaleReport) -> UpscaleReport:
        """Add ``other``'s entries to this report (e.g. the shares of several processes); return this report."""
        for name in ("written", "skipped", "failed", "warnings"):
            getattr(self, name).extend(getattr(other, name))
        return self


@dataclass
class BatchPlan:
    """The (source, target) pairs to upscale, and what is known before running: skipped outputs, inputs that
    are missing or whose outputs would collide, folders without images."""

    jobs: list[tuple[Path, Path]] = field(default_factory=list)
    report: UpscaleReport = field(default_factory=UpscaleReport)


def upscale_file(
    pipe: AddSRPipeline, source: str | Path, target: str | Path, settings: UpscaleSettings | None = None
) -> UpscaleResult:
    """Read ``source`` as it is, upscale its colour and (separately) its alpha, and write ``target`` atomically in
    the format of its suffix, keeping grey, 16 bits (PNG, TIFF), the ICC profile and the EXIF data that still holds.

    Raises :class:`addsr.io.ImageFileError` (path and one-line reason) when the file cannot be read, is too large
    for the device's memory, or holds transparency that ``target``'s format cannot; nothing is written then."""
    settings = settings or UpscaleSettings()
    source, target = Path(source), Path(target)
    image = read_image(source, settings.max_pixels)
    check_writable(image, target)
    try:
        color, prompt = _run_pipeline(pipe, image.color(), settings)
        alpha = image.alpha()
        if alpha is not None and settings.alpha == "model":
            alpha = to_grayscale(_run_pipeline(pipe, alpha.repeat(1, 3, 1, 1), settings)[0])
        elif alpha is not None:
            alpha = resize_images(alpha, tuple(color.shape[-2:])).clamp(0, 1)
    except (torch.OutOfMemoryError, MemoryError):
        width, height = image.size
        raise ImageFileError(source, f"{width}x{height} is too large for {pipe.device}'s memory with tile "
                                     f"{settings.sampler.tile}; try a smaller --tile") from None
    write_image(image.with_pixels(color, alpha), target, settings.quality)
    if settings.save_prompt:
        save_text(prompt, target.with_suffix(".txt"))
    warnings = [f"only the first of its {image.frames} frames was upscaled"] if image.frames > 1 else []
    return UpscaleResult(source, target, prompt, warnings)


def _run_pipeline(pipe: AddSRPipeline, images: torch.Tensor, settings: UpscaleSettings) -> tuple[torch.Tensor, str]:
    """The one place files meet the pipeline: ``[1, 3, H, W]`` in ``[0, 1]`` to the upscaled float image and prompt."""
    generator = torch.Generator().manual_seed(settings.seed) if settings.seed is not None else None
    result = pipe(images, settings=settings.sampler, generator=generator, output_type="pt")
    return result.images, result.prompts[0]


def output_name(source: Path, batch: BatchSettings) -> str:
    """The output file name of ``source``: its stem, the suffix, and the extension of ``batch.ext``."""
    extension = source.suffix.lower() if batch.ext == "same" else f".{batch.ext}"
    if extension not in OUTPUT_FORMATS:  # `same` for a format that is read but not written (GIF, BMP, ...)
        extension = ".png"
    return f"{source.stem}{batch.suffix}{extension}"


def plan_batch(inputs: Iterable[str | Path], out_dir: str | Path, batch: BatchSettings | None = None) -> BatchPlan:
    """Pair every image of ``inputs`` (files, and folders' images) with its output in ``out_dir`` (under its
    subfolder when ``batch.recursive``). Raises :class:`addsr.io.NoImagesError` when nothing at all was found."""
    batch = batch or BatchSettings()
    out_dir = Path(out_dir)
    plan = BatchPlan()
    claimed: dict[Path, Path] = {}
    folders = []
    for item in map(Path, inputs):
        if item.is_dir():
            folders.append(item)
            sources = [(path, path.parent.relative_to(item)) for path in find_images([item], batch.recursive)]
            if not sources:
                plan.report.warnings.append((item, f"no {IMAGE_FORMATS} images here"))
        else:
            sources = [(item, Path())]
        for source, folder in sources:
            target = out_dir / folder / output_name(source, batch)
            if not source.exists():
                plan.report.failed.append((source, "no such file"))
            elif target in claimed:
                plan.report.failed.append((source, f"same output name as {claimed[target]}; rename one of them"))
            elif target.exists() and not batch.overwrite:
                claimed[target] = source
                plan.report.skipped.append(target)
            else:
                claimed[target] = source
                plan.jobs.append((source, target))
    if not claimed and not plan.report.failed:
        raise NoImagesError(folders)
    return plan


def upscale_batch(
    pipe: AddSRPipeline, jobs: Iterable[tuple[Path, Path]], settings: UpscaleSettings | None = None,
    progress: bool = True,
) -> UpscaleReport:
    """:func:`upscale_file` on each (source, target) pair; a failure is recorded and the others still run."""
    jobs = list(jobs)
    report = UpscaleReport()
    pipe.progress_bar = progress  # each image's bar counts its tiles x steps, under the batch's bar
    for source, target in tqdm(jobs, desc="Upscaling", unit="image", disable=not progress):
        try:
            result = upscale_file(pipe, source, target, settings)
        except ImageFileError as error:
            report.failed.append((source, error.reason))
            continue
        except OSError as error:  # the output could not be written (permissions, a full disk)
            report.failed.append((source, f"cannot write {target}: {error.strerror or error}"))
            continue
        report.written.append(result.target)
        report.warnings.extend((source, warning) for warning in result.warnings)
    return report


def upscale_files(
    pipe: AddSRPipeline,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    settings: UpscaleSettings | None = None,
    batch: BatchSettings | None = None,
    progress: bool = True,
) -> UpscaleReport:
    """Upscale every image of ``inputs`` (files or folders) into ``out_dir``: :func:`plan_batch`, then
    :func:`upscale_batch`."""
    plan = plan_batch(inputs, out_dir, batch)
    return plan.report.extend(upscale_batch(pipe, plan.jobs, settings, progress))
