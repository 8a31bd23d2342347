"""`addsr serve`: a Gradio page that upscales uploaded images with the same per-file code as `addsr upscale`."""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from PIL import Image

from .colorfix import COLOR_FIXES
from .io import DEFAULT_MAX_PIXELS, ImageFileError, load_image, save_image
from .pipeline import AddSRPipeline
from .sampling import DEFAULT_SAMPLER, SamplerSettings
from .tiling import parse_tile
from .upscale import UpscaleSettings, upscale_file

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("png", "webp", "jpg")
MODEL_COLOR_FIX = "the model's own"
DISPLAY_MAX_SIDE = 2048
"""The comparison shows both images at most this large; the download is always the full-resolution file."""
TILE_CHOICES = ("auto", "0", "128", "256", "512")
"""Offered tile sides in input pixels (any other whole number may be typed): auto, or 0 for the whole image."""
SEED_RANGE = 2**32
# system fonts only: the page loads nothing from outside the server
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


@dataclass
class ServeConfig:
    """Where the page listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    """A public gradio.live link; off unless asked for."""
    max_upload_mb: float = 50.0
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    """Larger images are refused, as by ``addsr upscale --max-pixels``; None: no limit."""
    queue_size: int = 16
    """Requests that may wait for the model; more are turned away with a message."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.max_upload_mb <= 0:
            raise ValueError(f"the upload limit must be positive, got {self.max_upload_mb} MB")
        if self.queue_size < 1:
            raise ValueError(f"the queue must hold at least one request, got {self.queue_size}")

    @property
    def is_local(self) -> bool:
        """Whether only this machine can reach the page."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class UploadError(Exception):
    """An upload that could not be upscaled; the message is one line for the page."""


def upscale_upload(
    pipe: AddSRPipeline, source: Path, out_dir: Path, settings: UpscaleSettings, output_format: str
) -> tuple[Path, str]:
    """Upscale one uploaded file into ``out_dir`` with `addsr upscale`'s per-file code; return the written file
    (in ``output_format``) and the prompt used. Every file read, upscale and write of the page happens here."""
    try:
        result = upscale_file(pipe, source, out_dir / f"{source.stem}.{output_format}", settings)
    except ImageFileError as error:
        raise UploadError(error.reason) from None
    return result.target, result.prompt


def comparison_images(source: Path, output: Path, folder: Path) -> tuple[Path, Path]:
    """The input enlarged (bicubic) and the output, at one size no larger than ``DISPLAY_MAX_SIDE``, as PNGs."""
    with Image.open(output) as after:
        after.load()
    scale = min(1.0, DISPLAY_MAX_SIDE / max(after.size))
    size = (max(1, round(after.width * scale)), max(1, round(after.height * scale)))
    before = load_image(source).resize(size, Image.Resampling.BICUBIC)
    if after.size != size:
        after = after.resize(size, Image.Resampling.LANCZOS)
    return save_image(before, folder / "before.png"), save_image(after, folder / "after.png")


@dataclass
class Upscaled:
    """One upload's result on the page."""

    name: str
    output: Path
    before: Path
    after: Path
    prompt: str
    seconds: float


@dataclass
class PageRun:
    """One press of the button: its work folder, its results, and one table row per upload."""

    folder: Path
    seed: int
    results: list[Upscaled] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)

    def upscale(self, pipe: AddSRPipeline, source: Path, settings: UpscaleSettings, output_format: str) -> Upscaled:
        """Upscale one upload and record its row; an :class:`UploadError` is recorded, then raised."""
        folder = self.folder / str(len(self.rows))
        started = time.perf_counter()
        try:  # the output keeps the upload's name, so it gets a folder of its own
            output, prompt = upscale_upload(pipe, source, folder / "output", settings, output_format)
            before, after = comparison_images(source, output, folder)
        except UploadError as error:
            self.rows.append([source.name, str(error), None, self.seed])
            raise
        result = Upscaled(source.name, output, before, after, prompt, time.perf_counter() - started)
        with Image.open(output) as written:
            self.rows.append([source.name, f"{written.width} x {written.height} {output_format}",
                              round(result.seconds, 2), self.seed])
        self.results.append(result)
        return result

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _remove_run(run: PageRun | None) -> None:
    if run is not None:
        run.remove()


def _choices(results: list[Upscaled]) -> list[str]:
    return [f"{number}. {result.name} ({result.seconds:.1f} s)" for number, result in enumerate(results, 1)]


def _color_fix_info(pipe: AddSRPipeline) -> str:
    fix = pipe.default_color_fix
    return f"This model's own: {fix.method}" + (f", {fix.wavelet_levels} levels" if fix.method == "wavelet" else "")


def build_demo(pipe: AddSRPipeline, work_dir: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> gr.Blocks:
    """The page over ``pipe``; each press of the button works in its own folder under ``work_dir``; images over
    ``max_pixels`` are refused."""
    with gr.Blocks(title="AddSR x4 upscaler", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# AddSR x4 upscaler\nDrop one or several images: they are upscaled x4 in turn.")
        with gr.Row():
            with gr.Column(scale=2):
                files = gr.File(label="Images", file_count="multiple", file_types=["image"], elem_id="inputs")
                prompt = gr.Textbox(label="Prompt", info="Words added to the RAM tags.", elem_id="prompt-input")
                num_steps = gr.Slider(1, 4, value=DEFAULT_SAMPLER.num_steps, step=1, label="Steps")
                psr_weight = gr.Slider(0, 1, value=DEFAULT_SAMPLER.psr_weight, step=0.05, label="PSR weight",
                                       info="0 turns PSR off.")
                color_fix = gr.Dropdown([MODEL_COLOR_FIX, *COLOR_FIXES], value=MODEL_COLOR_FIX, label="Colour fix",
                                        info=_color_fix_info(pipe))
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=SEED_RANGE - 1)
                    random_seed = gr.Checkbox(True, label="Random seed", info="The seed used is shown with the result.")
                with gr.Row():
                    tile = gr.Dropdown(list(TILE_CHOICES), value=str(DEFAULT_SAMPLER.tile), allow_custom_value=True,
                                       label="Tile size",
                                       info="Input pixels; auto: chosen for the device; 0: the whole image at once.")
                    output_format = gr.Dropdown(list(OUTPUT_FORMATS), value="png", label="Download as")
                with gr.Accordion("Advanced", open=False):
                    wavelet_levels = gr.Number(None, label="Wavelet levels", precision=0, minimum=1,
                                               info="For the wavelet fix; empty: the model's own. Fewer take finer "
                                                    "detail from the input.")
                    guidance_scale = gr.Number(DEFAULT_SAMPLER.guidance_scale, label="Guidance scale",
                                               info="Off at 1 or below.")
                    added_prompt = gr.Textbox(DEFAULT_SAMPLER.added_prompt, label="Quality words")
                    tile_overlap = gr.Number(None, label="Tile overlap", precision=0, minimum=0,
                                             info="Input pixels; empty: a quarter of the tile.")
                button = gr.Button("Upscale x4", variant="primary", elem_id="upscale")
            with gr.Column(scale=3):
                comparison = gr.ImageSlider(label="Before (bicubic) / after", type="filepath", format="png",
                                            interactive=False, elem_id="comparison")
                shown = gr.Dropdown([], label="Showing", type="index", interactive=True, visible=False)
                prompt_used = gr.Textbox(label="Prompt used (RAM tags, your words, quality words)",
                                         interactive=False, elem_id="prompt-used")
                table = gr.Dataframe(headers=["file", "result", "seconds", "seed"], label="Results",
                                     interactive=False, elem_id="results")
                downloads = gr.File(label="Full-resolution files", file_count="multiple", interactive=False,
                                    elem_id="downloads")
        run_state = gr.State(None, delete_callback=_remove_run)

        def upscale(files, prompt, num_steps, psr_weight, color_fix, seed, random_seed, tile, output_format,
                    wavelet_levels, guidance_scale, added_prompt, tile_overlap, previous,
                    progress=gr.Progress(track_tqdm=True)):
            if not files:
                raise gr.Error("Add one or more images first.", print_exception=False)
            _remove_run(previous)
            seed = random.randrange(SEED_RANGE) if random_seed else int(seed or 0)
            try:
                sampler = SamplerSettings(
                    num_steps=int(num_steps), psr_weight=float(psr_weight), prompt=prompt, added_prompt=added_prompt,
                    color_fix=None if color_fix == MODEL_COLOR_FIX else color_fix,
                    wavelet_levels=int(wavelet_levels) if wavelet_levels else None,
                    guidance_scale=float(guidance_scale or 0), tile=parse_tile(str(tile)),
                    tile_overlap=None if tile_overlap is None else int(tile_overlap),
                )
                settings = UpscaleSettings(sampler, seed=seed, max_pixels=max_pixels)
            except ValueError as error:
                raise gr.Error(str(error), print_exception=False) from None
            run = PageRun(Path(tempfile.mkdtemp(prefix="run-", dir=work_dir)), seed)
            for index, source in enumerate(map(Path, files)):
                progress(index / len(files), desc=f"{source.name} ({index + 1} of {len(files)})")
                try:
                    result = run.upscale(pipe, source, settings, output_format)
                except UploadError as error:
                    gr.Warning(f"{source.name}: {error}")
                    yield {run_state: run, table: run.rows}
                    continue
                yield {
                    run_state: run, table: run.rows, comparison: (str(result.before), str(result.after)),
                    prompt_used: result.prompt, downloads: [str(item.output) for item in run.results],
                    shown: gr.Dropdown(choices=_choices(run.results), value=_choices(run.results)[-1],
                                       visible=len(run.results) > 1),
                }
            if not run.results:
                raise gr.Error("Nothing was upscaled: " + "; ".join(f"{row[0]}: {row[1]}" for row in run.rows),
                               print_exception=False)

        def show(index: int | None, run: PageRun | None):
            if run is None or index is None:
                return gr.skip(), gr.skip()
            result = run.results[index]
            return (str(result.before), str(result.after)), result.prompt

        button.click(
            upscale, api_name="upscale",
            inputs=[files, prompt, num_steps, psr_weight, color_fix, seed, random_seed, tile, output_format,
                    wavelet_levels, guidance_scale, added_prompt, tile_overlap, run_state],
            outputs=[run_state, table, comparison, prompt_used, downloads, shown],
        )
        shown.input(show, inputs=[shown, run_state], outputs=[comparison, prompt_used], api_visibility="private")
    return demo


@contextmanager
def open_page(pipe: AddSRPipeline, config: ServeConfig) -> Iterator[gr.Blocks]:
    """Serve the page in the background while the context is open; the model runs one request at a time, and
    every upload, result and cached file lives in one temporary folder that is removed on exit."""
    if not config.is_local:
        logger.warning("listening on %s: anyone who can reach this machine on port %d can use this page and its "
                       "model; there is no login", config.host, config.port)
    work_dir = Path(tempfile.mkdtemp(prefix="addsr-serve-"))
    previous_temp = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(work_dir / "gradio")
    try:
        demo = build_demo(pipe, work_dir, config.max_pixels)
        demo.queue(default_concurrency_limit=1, max_size=config.queue_size)
        demo.launch(
            server_name=config.host, server_port=config.port, share=config.share,
            max_file_size=int(config.max_upload_mb * 1024 * 1024), prevent_thread_lock=True, inbrowser=False,
            mcp_server=False, ssr_mode=False, quiet=True, theme=THEME, footer_links=[],
        )
        try:
            yield demo
        finally:
            demo.close()
    finally:
        if previous_temp is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous_temp
        shutil.rmtree(work_dir, ignore_errors=True)


def wait_until_stopped(page: gr.Blocks) -> None:
    """Serve until Ctrl+C or SIGTERM (from the main thread); leaving ``open_page`` then cleans up."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    page.block_thread()
