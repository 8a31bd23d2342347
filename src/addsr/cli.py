"""The `addsr` command line: a thin shell over the Python API."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, NoReturn, Optional

import typer
from typer.core import TyperGroup

from .io import DEFAULT_MAX_PIXELS
from .sampling import DEFAULT_SAMPLER

if TYPE_CHECKING:
    from .pipeline import AddSRPipeline
    from .sampling import SamplerSettings
    from .upscale import BatchPlan, UpscaleReport, UpscaleSettings


class CommandError(Exception):
    """A command's one-line error, its exit status, and the exception behind it (raised instead with --debug)."""

    def __init__(self, message: str, code: int, cause: Exception | None):
        super().__init__(message)
        self.code, self.cause = code, cause


class CommandGroup(TyperGroup):
    """Runs a command and prints an expected error (a bad input, a missing file, a wrong option) as one ``error:``
    line with a non-zero exit status; ``--debug`` or ``ADDSR_DEBUG=1`` shows the traceback instead."""

    def invoke(self, ctx: typer.Context):
        debug = ctx.params.get("debug")
        try:
            return super().invoke(ctx)
        except CommandError as error:
            if debug and error.cause is not None:
                raise error.cause
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.code) from None
        except Exception as error:
            if debug or not _expected(error):
                raise
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None


def _expected(error: Exception) -> bool:
    """Errors that come from what the user gave, not from a defect of addsr."""
    import torch

    from .assemble import AssembleError
    from .degradations import DegradeFolderError
    from .metrics import MetricUnavailable

    expected = (ValueError, OSError, ImportError, torch.OutOfMemoryError, AssembleError, DegradeFolderError,
                MetricUnavailable)
    return isinstance(error, expected)


app = typer.Typer(help="AddSR: fast diffusion-based blind image super-resolution.", no_args_is_help=True,
                  cls=CommandGroup)

ModelOption = Annotated[
    Optional[Path],
    typer.Option("--model", help="Model folder (unet/, controlnet/, ...); default: the shipped small model."),
]
BaseOption = Annotated[
    Optional[Path], typer.Option("--base-model", help="Stable Diffusion 2 base folder for parts the model lacks.")
]


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", envvar="ADDSR_DEBUG", help="Show the full traceback of errors.")
    ] = False,
) -> None:
    """AddSR: fast diffusion-based blind image super-resolution."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # the commands show their own progress; the libraries' per-file loading bars are noise here
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _fail(message: str, code: int = 2, cause: Exception | None = None) -> NoReturn:
    """End the command with one ``error:`` line and exit status ``code``; ``cause`` is the error behind it."""
    raise CommandError(message, code, cause)


SAMPLER_OPTIONS = {"num_steps": "--steps"}
"""Sampler settings whose option is not named after the field."""


def _sampler_settings(tile: str, **values) -> SamplerSettings:
    """The sampler settings of the options (``tile`` as typed), or a one-line error naming the option at fault."""
    from .sampling import SamplerSettings, SettingError
    from .tiling import parse_tile

    try:
        return SamplerSettings(tile=parse_tile(tile), **values)
    except SettingError as error:
        option = SAMPLER_OPTIONS.get(error.name, "--" + error.name.replace("_", "-"))
        _fail(f"{option}: {error}", cause=error)
    except ValueError as error:
        _fail(f"--tile: {error}", cause=error)


@app.command()
def upscale(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG, JPEG, WebP, TIFF).")],
    out_dir: Annotated[Path, typer.Option("-o", "--out-dir", help="Folder for the upscaled images.")],
    model: ModelOption = None,
    base_model: BaseOption = None,
    steps: Annotated[int, typer.Option("--steps", help="Student steps (1 to 4).")] = DEFAULT_SAMPLER.num_steps,
    psr_weight: Annotated[float, typer.Option(help="PSR blend weight; 0 turns PSR off.")] = DEFAULT_SAMPLER.psr_weight,
    prompt: Annotated[str, typer.Option(help="Extra words for the text prompt.")] = DEFAULT_SAMPLER.prompt,
    color_fix: Annotated[
        Optional[str], typer.Option(help="adain, wavelet or none; default: the model's own (adain if it names none).")
    ] = DEFAULT_SAMPLER.color_fix,
    wavelet_levels: Annotated[
        Optional[int],
        typer.Option(help="Levels of the wavelet fix (released: 5); fewer take finer detail from the LR."),
    ] = DEFAULT_SAMPLER.wavelet_levels,
    guidance_scale: Annotated[
        float, typer.Option(help="Classifier-free guidance; off at <= 1.")
    ] = DEFAULT_SAMPLER.guidance_scale,
    seed: Annotated[Optional[int], typer.Option(help="Seed for reproducible results.")] = None,
    tile: Annotated[
        str, typer.Option(help="Tile side in input pixels: auto (chosen for the device), or 0 for no tiling.")
    ] = str(DEFAULT_SAMPLER.tile),
    tile_overlap: Annotated[
        Optional[int], typer.Option(help="Overlap of neighbouring tiles in input pixels; default: tile / 4.")
    ] = DEFAULT_SAMPLER.tile_overlap,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="auto (float32 on a CPU, float16 on a GPU), float32, bfloat16 or float16.")
    ] = "auto",
    psr_decoder: Annotated[
        Optional[Path],
        typer.Option(help="Small decoder folder (addsr train decoder) for the PSR conditions: faster, changes the "
                          "output."),
    ] = None,
    compile: Annotated[
        bool, typer.Option("--compile", help="torch.compile the models first (the first image pays for compiling).")
    ] = False,
    ram: Annotated[Optional[Path], typer.Option(help="RAM checkpoint ram_swin_large_14m.pth.")] = None,
    dape: Annotated[Optional[Path], typer.Option(help="DAPE checkpoint, loaded over RAM.")] = None,
    ram_tag_list: Annotated[Optional[Path], typer.Option(help="RAM's ram_tag_list.txt.")] = None,
    ram_tag_thresholds: Annotated[Optional[Path], typer.Option(help="RAM's ram_tag_list_threshold.txt.")] = None,
    save_prompt: Annotated[bool, typer.Option(help="Write the prompt used beside each output (.txt).")] = False,
    alpha: Annotated[
        str, typer.Option(help="How alpha is upscaled: bicubic, or model (as a grey image through the pipeline).")
    ] = "bicubic",
    ext: Annotated[str, typer.Option(help="Output format: png, jpg, webp, tif, or same as the input.")] = "png",
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG and WebP quality.")] = 95,
    suffix: Annotated[str, typer.Option(help="Added to each output's name, e.g. _x4.")] = "",
    overwrite: Annotated[
        bool, typer.Option(help="Replace existing outputs; otherwise they are skipped, so a stopped batch resumes.")
    ] = False,
    recursive: Annotated[
        bool, typer.Option(help="Search folders' subfolders too, keeping their tree under OUT_DIR.")
    ] = False,
    max_pixels: Annotated[
        int, typer.Option(min=0, help="Refuse inputs with more pixels (decompression bombs); 0: no limit.")
    ] = DEFAULT_MAX_PIXELS,
) -> None:
    """Upscale images x4 into OUT_DIR, keeping alpha, 16 bits, grey, orientation and colour profile.

    Under `accelerate launch -m addsr upscale ...` the files are shared out between the processes."""
    from .devices import resolve_device, resolve_dtype
    from .upscale import BatchSettings, UpscaleSettings, plan_batch

    sampler = _sampler_settings(
        tile, num_steps=steps, psr_weight=psr_weight, prompt=prompt, color_fix=color_fix,
        wavelet_levels=wavelet_levels, guidance_scale=guidance_scale, tile_overlap=tile_overlap,
    )
    try:
        settings = UpscaleSettings(sampler, seed=seed, alpha=alpha, max_pixels=max_pixels or None, quality=quality,
                                   save_prompt=save_prompt)
        batch = BatchSettings(ext=ext, suffix=suffix, overwrite=overwrite, recursive=recursive)
        resolve_dtype(dtype, resolve_device(device))
    except ValueError as error:
        _fail(str(error), cause=error)
    _check_out_dir(out_dir)
    plan = plan_batch(inputs, out_dir, batch)
    load_pipeline = functools.partial(
        _load_with_speed_options, psr_decoder, compile, model, base_model_dir=base_model, dtype=dtype, ram=ram,
        dape=dape, ram_tag_list=ram_tag_list, ram_tag_thresholds=ram_tag_thresholds,
    )
    report, main_process = _upscale_shared(plan, settings, device, load_pipeline)
    if main_process:
        for path, reason in report.failed:
            typer.echo(f"error: {path}: {reason}", err=True)
        for path, message in report.warnings:
            typer.echo(f"warning: {path}: {message}", err=True)
        typer.echo(f"{len(report.written)} written to {out_dir}, {len(report.skipped)} skipped (already there), "
                   f"{len(report.failed)} failed")
    if report.failed:
        raise typer.Exit(1)


def _load_with_speed_options(psr_decoder: Path | None, compile: bool, *args, **kwargs) -> AddSRPipeline:
    """``AddSRPipeline.from_pretrained(*args, **kwargs)`` with the speed options of ``upscale``."""
    from .pipeline import AddSRPipeline

    pipe = AddSRPipeline.from_pretrained(*args, **kwargs)
    if psr_decoder is not None:
        pipe.use_psr_decoder(psr_decoder)
    return pipe.compile() if compile else pipe


def _check_out_dir(out_dir: Path) -> None:
    existing = next(path for path in (out_dir, *out_dir.parents) if path.exists())
    if not existing.is_dir():
        _fail(f"-o {out_dir}: {existing} is a file, not a folder; give a folder for the outputs")


def _upscale_shared(
    plan: BatchPlan, settings: UpscaleSettings, device: str, load_pipeline: Callable[..., AddSRPipeline]
) -> tuple[UpscaleReport, bool]:
    """Run the plan's jobs, shared out between the processes of an ``accelerate launch`` (one process otherwise);
    return the whole batch's report, and whether this is the main process."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from .devices import resolve_device
    from .upscale import UpscaleReport, upscale_batch

    state = PartialState(cpu=resolve_device(device).type == "cpu")  # CPU processes talk through gloo
    if state.num_processes > 1 and device == "auto":
        device = state.device  # each process on its own GPU
    share = UpscaleReport()
    if plan.jobs:
        try:
            pipe = load_pipeline(device=device)
        except (FileNotFoundError, ValueError, OSError) as error:
            _fail(f"cannot load the model: {error}", cause=error)
        with state.split_between_processes(plan.jobs) as jobs, _log_to_console(state.is_local_main_process):
            share = upscale_batch(pipe, jobs, settings, progress=state.is_local_main_process)
    for process_share in gather_object([share]):
        plan.report.extend(process_share)
    return plan.report, state.is_main_process


@contextlib.contextmanager
def _log_to_console(enabled: bool) -> Iterator[None]:
    """Show addsr's INFO messages (such as the tile layout of each image) above the progress bars."""
    import logging

    from tqdm.contrib.logging import logging_redirect_tqdm

    logger = logging.getLogger("addsr")
    if not enabled:
        yield
        return
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with logging_redirect_tqdm([logger]):
            yield
    finally:
        logger.setLevel(level)


@app.command()
def serve(
    model: ModelOption = None,
    base_model: BaseOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but 127.0.0.1 opens the page to others.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 7860,
    share: Annotated[bool, typer.Option(help="Also publish a public gradio.live link.")] = False,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest upload accepted, in MB.")] = 50.0,
    max_pixels: Annotated[
        int, typer.Option(min=0, help="Refuse images with more pixels (decompression bombs); 0: no limit.")
    ] = DEFAULT_MAX_PIXELS,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")] = "auto",
) -> None:
    """Serve a web page that upscales uploaded images x4 (needs Gradio: the 'web' extra)."""
    from .pipeline import AddSRPipeline

    try:
        from . import serve as web
    except ImportError as error:
        _fail(f"the web page needs Gradio ({error}): pip install -c constraints.txt -e '.[web]'")
    config = web.ServeConfig(host=host, port=port, share=share, max_upload_mb=max_upload_mb,
                             max_pixels=max_pixels or None)
    try:
        pipe = AddSRPipeline.from_pretrained(model, base_model_dir=base_model, device=device, dtype=dtype)
    except (FileNotFoundError, ValueError, OSError) as error:
        _fail(f"cannot load the model: {error}")
    try:
        with web.open_page(pipe, config) as page:
            typer.echo(f"serving on {page.local_url} (model on {pipe.device}); Ctrl+C stops")
            if page.share_url:
                typer.echo(f"public link: {page.share_url}")
            web.wait_until_stopped(page)
    except OSError:
        _fail(f"cannot listen on {host}:{port}: the port is in use, or {host} is not an address of this machine")


@app.command()
def assemble(
    base: Annotated[Path, typer.Option(help="Stable Diffusion 2 base folder (vae/, text_encoder/, ...).")],
    model: Annotated[Path, typer.Option(help="AddSR or SeeSR folder (unet/, controlnet/).")],
    ram: Annotated[Path, typer.Option(help="RAM checkpoint ram_swin_large_14m.pth.")],
    tag_list: Annotated[Path, typer.Option(help="RAM's ram_tag_list.txt.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="The model folder to write.")],
    dape: Annotated[Optional[Path], typer.Option(help="DAPE checkpoint, merged into RAM.")] = None,
    tag_thresholds: Annotated[Optional[Path], typer.Option(help="RAM's ram_tag_list_threshold.txt.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Gather SD2 base, AddSR weights and RAM/DAPE into one checked model folder."""
    from .assemble import AssembleError, assemble_model

    try:
        folder = assemble_model(base, model, ram, dape, tag_list, tag_thresholds, out, overwrite=overwrite)
    except AssembleError as error:
        _fail(str(error), code=1, cause=error)
    typer.echo(f"model folder written: {folder}")


@app.command()
def degrade(
    hr_dir: Annotated[Path, typer.Argument(help="Folder of HR images.")],
    out_dir: Annotated[Path, typer.Option("-o", "--out-dir", help="Writes hr/ and lr/ here.")],
    kind: Annotated[str, typer.Option(help="realesrgan, bicubic, blur, noise or noise_jpeg.")] = "realesrgan",
    crop: Annotated[int, typer.Option(help="Centre crop of the HR, in pixels; 0 keeps the whole image.")] = 512,
    seed: Annotated[int, typer.Option(help="Run seed; each image's seed derives from it and its name.")] = 0,
    scale: Annotated[int, typer.Option(help="Downscaling factor.")] = 4,
    device: Annotated[str, typer.Option(help="cpu, cuda or mps.")] = "cpu",
) -> None:
    """Write paired LR/HR data with a synthetic degradation."""
    from .degradations import DEGRADATION_KINDS, DegradeFolderError, degrade_folder
    from .devices import resolve_device

    if kind not in DEGRADATION_KINDS:
        _fail(f"--kind must be one of {', '.join(DEGRADATION_KINDS)}, got {kind!r}")
    try:
        written = degrade_folder(hr_dir, out_dir, kind=kind, crop=crop or None, seed=seed, scale=scale,
                                 device=resolve_device(device))
    except DegradeFolderError as error:
        _fail(str(error), code=1, cause=error)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        _fail(str(error), cause=error)
    typer.echo(f"{len(written)} LR/HR pairs written to {out_dir}")


def _comma_list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def _named_folders(values: list[str], kind: str) -> dict[str, dict[str, str]]:
    """``NAME=FOLDER`` options as config ``datasets`` entries."""
    datasets = {}
    for value in values:
        name, separator, folder = value.partition("=")
        if not separator:
            _fail(f"expected NAME=FOLDER, got {value!r}")
        datasets[name] = {"path": folder, "kind": kind}
    return datasets


ConfigArgument = Annotated[Path, typer.Argument(help="YAML or TOML config (see configs/).")]
SetOption = Annotated[list[str], typer.Option("--set", help="Override a config value: key.subkey=value.")]


@app.command(name="eval")
def evaluate(
    config: Annotated[Optional[Path], typer.Argument(help="YAML or TOML evaluation config (see configs/).")] = None,
    overrides: SetOption = [],
    hr: Annotated[list[str], typer.Option(help="NAME=FOLDER of HR images (synthetic degradations).")] = [],
    real: Annotated[list[str], typer.Option(help="NAME=FOLDER of real LR images (no-reference metrics).")] = [],
    method: Annotated[list[str], typer.Option("-m", "--method", help="bicubic, lanczos, spandrel:PATH, addsr:DIR[,steps=N,...].")] = [],
    out_dir: Annotated[Optional[Path], typer.Option("-o", "--out-dir", help="Results folder.")] = None,
    degradations: Annotated[Optional[str], typer.Option(help="Comma-separated: bicubic,blur,noise,noise_jpeg.")] = None,
    metrics: Annotated[Optional[str], typer.Option(help="Comma-separated, e.g. psnr,ssim,niqe,lpips.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of degradations and sampling.")] = None,
    niqe_params: Annotated[
        Optional[Path], typer.Option(help="NIQE pristine parameters (.npz); default: the copy shipped with addsr.")
    ] = None,
    iqa_weights: Annotated[Optional[Path], typer.Option(help="Folder of pyiqa weights (torch hub layout).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps.")] = None,
) -> None:
    """Benchmark methods under the paper's protocol: tables, per-image JSON, grids and a plot.

    The options are shortcuts for config keys (--hr and --real add to `datasets`); --set sets any key."""
    from .evaluation import evaluate as run_evaluation, load_config
    from .metrics import MetricUnavailable

    metric_settings = {"niqe_params_path": niqe_params, "iqa_weights_dir": iqa_weights}
    shortcuts = {
        "datasets": _named_folders(hr, "synthetic") | _named_folders(real, "real"), "out_dir": out_dir,
        "methods": method or None, "degradations": _comma_list(degradations), "metrics": _comma_list(metrics),
        "seed": seed, "device": device,
        "metric_settings": {key: str(value) for key, value in metric_settings.items() if value is not None} or None,
    }
    try:
        run = run_evaluation(load_config(config, overrides, **shortcuts))
    except (ValueError, FileNotFoundError, ImportError, MetricUnavailable) as error:
        _fail(str(error), cause=error)
    typer.echo(f"{run.computed} results computed, {run.skipped} already done; report in {run.out_dir}")


train_app = typer.Typer(help="Train the SeeSR-style teacher, distil an AddSR student with TA-ADD, train a VAE, or "
                        "distil a small PSR decoder.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


def _train(kind: str, config: Path, overrides: list[str]) -> None:
    import logging

    from . import training

    config_class, run, written = {
        "vae": (training.VAETrainingConfig, training.train_vae, "VAE written to"),
        "teacher": (training.TeacherTrainingConfig, training.train_teacher, "last checkpoint:"),
        "distill": (training.DistillationConfig, training.train_distill, "last checkpoint:"),
        "decoder": (training.DecoderTrainingConfig, training.train_decoder, "decoder written to"),
    }[kind]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = training.load_config(config, config_class, overrides)
        _check_training_files(settings)
    except (training.ConfigError, FileNotFoundError, ValueError) as error:
        _fail(str(error), cause=error)
    typer.echo(f"{written} {run(settings)}")


def _check_training_files(settings) -> None:
    """The data and validation images a run reads, checked before anything is loaded or written."""
    from .training.data import list_hr_images

    list_hr_images(settings.data.hr)
    missing = [path for path in settings.output.validation_images if not Path(path).exists()]
    if missing:
        raise FileNotFoundError(f"output.validation_images: {', '.join(missing)} not found")


@train_app.command("vae")
def train_vae(config: ConfigArgument, overrides: SetOption = []) -> None:
    """Train a small VAE from scratch (for models with no pretrained VAE, such as the small default); also under
    `accelerate launch`, and a killed run resumes."""
    _train("vae", config, overrides)


@train_app.command("teacher")
def train_teacher(config: ConfigArgument, overrides: SetOption = []) -> None:
    """Train the multi-step teacher (epsilon loss, LR-conditioned ControlNet)."""
    _train("teacher", config, overrides)


@train_app.command("distill")
def train_distill(config: ConfigArgument, overrides: SetOption = []) -> None:
    """Distil the teacher into the few-step student with TA-ADD."""
    _train("distill", config, overrides)


@train_app.command("decoder")
def train_decoder(config: ConfigArgument, overrides: SetOption = []) -> None:
    """Distil a small decoder from a model's VAE, for the PSR conditions (AddSRPipeline.use_psr_decoder)."""
    _train("decoder", config, overrides)


@train_app.command("tags")
def train_tags(
    config: ConfigArgument,
    overrides: SetOption = [],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace a tag cache made with other settings.")] = False,
) -> None:
    """Tag the USM-sharpened HR images of a config once (plain RAM, as released) into data.tag_cache.file."""
    import logging

    from .training import load_data_config
    from .training.tags import tag_hr_images

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        file = tag_hr_images(load_data_config(config, overrides), device, overwrite=overwrite)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    typer.echo(f"tags written to {file}")


if __name__ == "__main__":
    app()
