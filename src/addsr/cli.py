"""The `addsr` command line: a thin shell over the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="AddSR: fast diffusion-based blind image super-resolution.", no_args_is_help=True)

ModelOption = Annotated[
    Optional[Path],
    typer.Option("--model", help="Model folder (unet/, controlnet/, ...); default: the shipped small model."),
]
BaseOption = Annotated[
    Optional[Path], typer.Option("--base-model", help="Stable Diffusion 2 base folder for parts the model lacks.")
]


@app.callback()
def main() -> None:
    """AddSR: fast diffusion-based blind image super-resolution."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # the commands show their own progress; the libraries' per-file loading bars are noise here
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def upscale(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG, JPEG, WebP).")],
    out_dir: Annotated[Path, typer.Option("-o", "--out-dir", help="Folder for the upscaled PNGs.")],
    model: ModelOption = None,
    base_model: BaseOption = None,
    steps: Annotated[int, typer.Option("--steps", min=1, max=4, help="Student steps (1 to 4).")] = 4,
    psr_weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="PSR blend weight; 0 turns PSR off.")] = 0.4,
    prompt: Annotated[str, typer.Option(help="Extra words for the text prompt.")] = "",
    color_fix: Annotated[
        Optional[str], typer.Option(help="adain, wavelet or none; default: the model's own (adain if it names none).")
    ] = None,
    wavelet_levels: Annotated[
        Optional[int],
        typer.Option(min=1, help="Levels of the wavelet fix (released: 5); fewer take finer detail from the LR."),
    ] = None,
    guidance_scale: Annotated[float, typer.Option(help="Classifier-free guidance; off at <= 1.")] = 0.0,
    seed: Annotated[Optional[int], typer.Option(help="Seed for reproducible results.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")] = "auto",
    ram: Annotated[Optional[Path], typer.Option(help="RAM checkpoint ram_swin_large_14m.pth.")] = None,
    dape: Annotated[Optional[Path], typer.Option(help="DAPE checkpoint, loaded over RAM.")] = None,
    ram_tag_list: Annotated[Optional[Path], typer.Option(help="RAM's ram_tag_list.txt.")] = None,
    ram_tag_thresholds: Annotated[Optional[Path], typer.Option(help="RAM's ram_tag_list_threshold.txt.")] = None,
    save_prompt: Annotated[bool, typer.Option(help="Write the prompt used beside each output (.txt).")] = False,
) -> None:
    """Upscale images x4 into OUT_DIR."""
    from .colorfix import COLOR_FIXES
    from .pipeline import AddSRPipeline
    from .upscale import UpscaleSettings, upscale_files

    if color_fix is not None and color_fix not in COLOR_FIXES:
        _fail(f"--color-fix must be one of {', '.join(COLOR_FIXES)}, got {color_fix!r}")
    try:
        pipe = AddSRPipeline.from_pretrained(
            model, base_model_dir=base_model, device=device, dtype=dtype, ram=ram, dape=dape,
            ram_tag_list=ram_tag_list, ram_tag_thresholds=ram_tag_thresholds,
        )
    except (FileNotFoundError, ValueError, OSError) as error:
        _fail(f"cannot load the model: {error}")
    settings = UpscaleSettings(
        num_steps=steps, psr_weight=psr_weight, prompt=prompt, color_fix=color_fix,
        wavelet_levels=wavelet_levels, guidance_scale=guidance_scale, seed=seed, save_prompt=save_prompt,
    )
    report = upscale_files(pipe, inputs, out_dir, settings)
    for path, reason in report.failed:
        typer.echo(f"error: {path}: {reason}", err=True)
    typer.echo(f"{len(report.written)} written to {out_dir}, {len(report.failed)} failed")
    if report.failed:
        raise typer.Exit(1)


@app.command()
def serve(
    model: ModelOption = None,
    base_model: BaseOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but 127.0.0.1 opens the page to others.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 7860,
    share: Annotated[bool, typer.Option(help="Also publish a public gradio.live link.")] = False,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest upload accepted, in MB.")] = 50.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")] = "auto",
) -> None:
    """Serve a web page that upscales uploaded images x4 (needs Gradio: the 'web' extra)."""
    from .pipeline import AddSRPipeline

    try:
        from . import serve as web
    except ImportError as error:
        _fail(f"the web page needs Gradio ({error}): pip install -c constraints.txt -e '.[web]'")
    config = web.ServeConfig(host=host, port=port, share=share, max_upload_mb=max_upload_mb)
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
        _fail(str(error), code=1)
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

    if kind not in DEGRADATION_KINDS:
        _fail(f"--kind must be one of {', '.join(DEGRADATION_KINDS)}, got {kind!r}")
    try:
        written = degrade_folder(hr_dir, out_dir, kind=kind, crop=crop or None, seed=seed, scale=scale, device=device)
    except DegradeFolderError as error:
        _fail(str(error), code=1)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        _fail(str(error))
    typer.echo(f"{len(written)} LR/HR pairs written to {out_dir}")


def _comma_list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def _named_folders(values: list[str], kind: str) -> list:
    from .evaluation import DatasetSpec

    specs = []
    for value in values:
        name, separator, folder = value.partition("=")
        if not separator:
            _fail(f"expected NAME=FOLDER, got {value!r}")
        specs.append(DatasetSpec(name, Path(folder), kind))
    return specs


@app.command(name="eval")
def evaluate(
    config: Annotated[Optional[Path], typer.Argument(help="YAML evaluation config (see configs/).")] = None,
    hr: Annotated[list[str], typer.Option(help="NAME=FOLDER of HR images (synthetic degradations).")] = [],
    real: Annotated[list[str], typer.Option(help="NAME=FOLDER of real LR images (no-reference metrics).")] = [],
    method: Annotated[list[str], typer.Option("-m", "--method", help="bicubic, lanczos, spandrel:PATH, addsr:DIR[,steps=N,...].")] = [],
    out_dir: Annotated[Optional[Path], typer.Option("-o", "--out-dir", help="Results folder.")] = None,
    degradations: Annotated[Optional[str], typer.Option(help="Comma-separated: bicubic,blur,noise,noise_jpeg.")] = None,
    metrics: Annotated[Optional[str], typer.Option(help="Comma-separated, e.g. psnr,ssim,niqe,lpips.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of degradations and sampling.")] = None,
    niqe_params: Annotated[Optional[Path], typer.Option(help="NIQE pristine parameters (.npz).")] = None,
    iqa_weights: Annotated[Optional[Path], typer.Option(help="Folder of pyiqa weights (torch hub layout).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps.")] = None,
) -> None:
    """Benchmark methods under the paper's protocol: tables, per-image JSON, grids and a plot."""
    import dataclasses

    from .evaluation import EvalConfig, evaluate as run_evaluation, load_config
    from .metrics import MetricUnavailable

    overrides = {"out_dir": out_dir, "methods": method or None, "degradations": _comma_list(degradations),
                 "metrics": _comma_list(metrics), "seed": seed, "device": device}
    datasets = _named_folders(hr, "synthetic") + _named_folders(real, "real")
    try:
        if config is not None:
            settings = load_config(config, **overrides)
            settings.datasets += datasets
        else:
            settings = EvalConfig(datasets=datasets, **{k: v for k, v in overrides.items() if v is not None})
        metric_overrides = {"niqe_params_path": niqe_params, "iqa_weights_dir": iqa_weights}
        settings.metric_settings = dataclasses.replace(
            settings.metric_settings, **{k: v for k, v in metric_overrides.items() if v is not None}
        )
        run = run_evaluation(settings)
    except (ValueError, FileNotFoundError, ImportError, MetricUnavailable) as error:
        _fail(str(error))
    typer.echo(f"{run.computed} results computed, {run.skipped} already done; report in {run.out_dir}")


train_app = typer.Typer(help="Train the SeeSR-style teacher, distil an AddSR student with TA-ADD, or train a VAE.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")
ConfigArgument = Annotated[Path, typer.Argument(help="YAML or TOML training config (see configs/).")]
SetOption = Annotated[list[str], typer.Option("--set", help="Override a config value: key.subkey=value.")]


def _train(kind: str, config: Path, overrides: list[str]) -> None:
    import logging

    from . import training

    config_class, run = {
        "vae": (training.VAETrainingConfig, training.train_vae),
        "teacher": (training.TeacherTrainingConfig, training.train_teacher),
        "distill": (training.DistillationConfig, training.train_distill),
    }[kind]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = training.load_config(config, config_class, overrides)
    except (training.ConfigError, FileNotFoundError) as error:
        _fail(str(error))
    typer.echo(f"last checkpoint: {run(settings)}")


@train_app.command("vae")
def train_vae(config: ConfigArgument, overrides: SetOption = []) -> None:
    """Train a small VAE from scratch (for models with no pretrained VAE, such as the small default)."""
    _train("vae", config, overrides)


@train_app.command("teacher")
def train_teacher(config: ConfigArgument, overrides: SetOption = []) -> None:
    """Train the multi-step teacher (epsilon loss, LR-conditioned ControlNet)."""
    _train("teacher", config, overrides)


@train_app.command("distill")
def train_distill(config: ConfigArgument, overrides: SetOption = []) -> None:
    """Distil the teacher into the few-step student with TA-ADD."""
    _train("distill", config, overrides)


if __name__ == "__main__":
    app()
