"""AddSR inference: LR -> x4 HR in 1 to 4 student steps with Prediction-based Self-Refinement (paper Sec. 3;
released ``pipelines/pipeline_addsr.py``, ``AddSRPipeline.__call__``, as ``test_addsr.py`` runs it).

The whole algorithm is :meth:`AddSRPipeline.__call__`; the helpers above it size the condition image, build
prompts and move models around.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from .colorfix import ColorFix
from .denoiser import latent_factor, predict_noise, tagger_input
from .devices import limit_cpu_threads, resolve_device, resolve_dtype
from .diffusion import NoiseSchedule
from .io import images_to_tensor, resize_images, tensor_to_pil
from .model_folder import (
    BaseComponents,
    base_component_paths,
    default_model_dir,
    load_base_components,
    load_tagger,
    model_folders,
    network_paths,
    read_color_fix,
    save_base_components,
    write_color_fix,
)
from .models import ControlNet, UNet
from .sampling import DEFAULT_SAMPLER, SamplerSettings
from .speedups import load_small_decoder, speed_up, warn_if_slow
from .tagging import Tagger, tags_and_embeddings
from .tiling import Denoise, TiledDenoiser, TiledVAE, TileLayout, auto_tile_size, tiles_per_batch

logger = logging.getLogger(__name__)

BASE_MODEL_HINT = (
    "Pass base_model_dir (CLI: --base-model) pointing to a Stable Diffusion 2 base folder, or assemble a complete "
    "model folder with `addsr assemble`."
)
PROMPT_CACHE_SIZE = 8
"""Prompt lists whose text embeddings a pipeline keeps, so that a batch of images with one prompt encodes it once."""
ImageInput = Image.Image | np.ndarray | torch.Tensor | list
Generator = torch.Generator | list[torch.Generator] | None


@dataclass
class AddSRPipelineOutput:
    """Restored images (PIL list, ``[B, H, W, 3]`` float array or ``[B, 3, H, W]`` tensor) and the prompts used."""

    images: list[Image.Image] | np.ndarray | torch.Tensor
    prompts: list[str]


def condition_size(height: int, width: int, upscale: int = 4, process_size: int = 512) -> tuple[int, int]:
    """Size of the ControlNet condition for an LR image, as the released ``test_addsr.py`` (``main``) sizes it: short
    side at least ``process_size / upscale`` before upscaling, then each side floored to a multiple of 8."""
    min_side = process_size // upscale
    if height < min_side or width < min_side:
        scale = min_side / min(height, width)
        height, width = int(scale * height), int(scale * width)
    return height * upscale // 8 * 8, width * upscale // 8 * 8


def build_prompt(tags: str | None, prompt: str, added_prompt: str) -> str:
    """The released prompt template ``"{tags}, {prompt}," + added_prompt``; without a tagger the tags are left out
    (and so is the comma before ``added_prompt`` when there is no prompt either)."""
    if tags is not None:
        return f"{tags}, {prompt}," + added_prompt
    return f"{prompt}," + added_prompt if prompt else added_prompt


class AddSRPipeline:
    """Stable Diffusion 2 + SeeSR ControlNet super-resolution with AddSR's few-step PSR sampler."""

    def __init__(
        self,
        unet: UNet,
        controlnet: ControlNet,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        schedule: NoiseSchedule | None = None,
        tagger: Tagger | None = None,
        color_fix: ColorFix | None = None,
    ):
        """``color_fix``: the model's default colour fix (the released AdaIN when not given)."""
        if unet.config.get("use_image_cross_attention", False) and tagger is None:
            raise ValueError(
                "This model's U-Net uses image cross-attention (config use_image_cross_attention=true), so it needs "
                "a tagger for the image embeddings: pass ram=PATH_TO_ram_swin_large_14m.pth (and dape=..., "
                "ram_tag_list=...) to from_pretrained, tagger=... to the constructor, or use a folder made by "
                "`addsr assemble` that contains ram/."
            )
        self.unet, self.controlnet, self.vae = unet, controlnet, vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.schedule = schedule or NoiseSchedule.from_config()
        self.tagger = tagger
        self.psr_decoder: AutoencoderTiny | None = None
        """A small decoder for the PSR conditions only (:meth:`use_psr_decoder`); None: the VAE's."""
        self.default_color_fix = color_fix or ColorFix()
        self.progress_bar = True
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self._prompt_embeddings: dict[tuple[str, ...], torch.Tensor] = {}

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path | None = None,
        base_model_dir: str | Path | None = None,
        tagger: Tagger | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        ram: str | Path | None = None,
        dape: str | Path | None = None,
        ram_tag_list: str | Path | None = None,
        ram_tag_thresholds: str | Path | None = None,
    ) -> AddSRPipeline:
        """Load ``model_dir`` (``unet/``, ``controlnet/``, optionally the SD2 parts and ``ram/``; default: the
        shipped small model, ``DEFAULT_MODEL_DIR``); parts it lacks come from ``base_model_dir``. The tagger is
        ``tagger``, else built from the RAM/DAPE files, else the first ``ram/`` of the two folders. The default
        colour fix comes from ``model_dir/color_fix.json`` when the folder has one, else it is the released AdaIN.
        The rules are :mod:`addsr.model_folder`'s."""
        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        networks = network_paths(model_dir)
        folders = model_folders(model_dir, base_model_dir)
        components = load_base_components(base_component_paths(folders, BASE_MODEL_HINT))
        pipe = cls(
            unet=UNet.from_pretrained(networks["unet"]),
            controlnet=ControlNet.from_pretrained(networks["controlnet"]),
            vae=components.vae,
            text_encoder=components.text_encoder,
            tokenizer=components.tokenizer,
            schedule=components.schedule,
            tagger=tagger or load_tagger(folders, ram, dape, ram_tag_list, ram_tag_thresholds),
            color_fix=read_color_fix(model_dir),
        )
        return pipe.to(device, dtype)

    def save_pretrained(self, model_dir: str | Path) -> Path:
        """Write every part into one folder (safetensors) that :meth:`from_pretrained` loads alone."""
        model_dir = Path(model_dir)
        self.unet.save_pretrained(model_dir / "unet")
        self.controlnet.save_pretrained(model_dir / "controlnet")
        components = BaseComponents(self.vae, self.text_encoder, self.tokenizer, self.schedule)
        save_base_components(model_dir, components, self.tagger)
        if self.default_color_fix != ColorFix():
            write_color_fix(model_dir, self.default_color_fix)
        return model_dir

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> AddSRPipeline:
        """Move to ``device`` (auto: CUDA, MPS, CPU) in ``dtype`` (auto: float32 on CPU, float16 elsewhere) and
        apply the speed-ups that keep the output (:mod:`addsr.speedups`). The VAE stays in float32 under float16,
        where its decoder overflows. float16 on a CPU warns: it is slow there, bfloat16 is the fast half type."""
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        warn_if_slow(self.device, self.dtype)
        if self.device.type == "cpu":
            limit_cpu_threads()
        vae_dtype = torch.float32 if self.dtype == torch.float16 else self.dtype
        for model in (self.unet, self.controlnet, self.text_encoder):
            _move(model, self.device, self.dtype)
        _move(self.vae, self.device, vae_dtype)
        if self.psr_decoder is not None:
            _move(self.psr_decoder, self.device, vae_dtype)
        for model in (self.unet, self.controlnet, self.vae, self.psr_decoder):
            if model is not None:
                speed_up(model, self.device)
        if hasattr(self.tagger, "to"):
            self.tagger.to(self.device, self.dtype)
            getattr(self.tagger, "eval", lambda: None)()
        self._prompt_embeddings.clear()
        return self

    def use_psr_decoder(self, decoder: str | Path | AutoencoderTiny | None) -> AddSRPipeline:
        """Decode the PSR conditions of steps 2 to 4 with a small decoder instead of the VAE: a diffusers
        ``AutoencoderTiny`` (or its folder) trained on this model's latents by ``addsr train decoder``. The final
        image is still decoded by the VAE. This changes the output (docs/performance.md measures by how much);
        ``None`` goes back to the VAE."""
        if isinstance(decoder, (str, Path)):
            decoder = load_small_decoder(decoder)
        self.psr_decoder = decoder
        if decoder is not None:
            if latent_factor(decoder) != latent_factor(self.vae):
                raise ValueError(f"the PSR decoder upsamples x{latent_factor(decoder)}, the VAE x"
                                 f"{latent_factor(self.vae)}: train one for this model with `addsr train decoder`")
            _move(decoder, self.device, torch.float32 if self.dtype == torch.float16 else self.dtype)
            speed_up(decoder, self.device)
        return self

    def compile(self, **options: Any) -> AddSRPipeline:
        """``torch.compile`` in place the networks the pipeline calls (``options`` go to ``torch.compile``): the
        U-Net, the ControlNet and the encoder and decoder halves of the VAE and PSR decoder, which the pipeline
        reaches through ``encode``/``decode`` rather than through their ``forward``. The first image of each size
        pays for the compiling; fused kernels change the output by float rounding only (docs/performance.md)."""
        for module in self._compiled_modules():
            module.compile(**options)
        return self

    def _compiled_modules(self) -> list[torch.nn.Module]:
        modules = [self.unet, self.controlnet, self.vae.encoder, self.vae.decoder]
        return modules + ([self.psr_decoder.decoder] if self.psr_decoder is not None else [])

    # -- building blocks ------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text embeddings, padded to the tokenizer's maximum length; the last ``PROMPT_CACHE_SIZE`` prompt
        lists are kept (until :meth:`to`), so that a batch of images with the same prompt encodes it once."""
        key = tuple(prompts)
        if key not in self._prompt_embeddings:
            tokens = self.tokenizer(
                prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            )
            if len(self._prompt_embeddings) >= PROMPT_CACHE_SIZE:
                del self._prompt_embeddings[next(iter(self._prompt_embeddings))]
            self._prompt_embeddings[key] = self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)
        return self._prompt_embeddings[key]

    def image_embeddings(self, images: torch.Tensor, mode: Literal["bilinear", "bicubic"]) -> torch.Tensor | None:
        """Tagger embeddings of whole images resized to its input size (``mode``: bilinear for the LR, bicubic for
        PSR estimates, as released), or None for a model without image cross-attention."""
        if self.tagger is None:
            return None
        resized = tagger_input(images, self.tagger.input_size, mode)
        return self.tagger.embeddings(resized.to(self.device, self.dtype)).to(self.dtype)

    def tile_layout(
        self, lr_size: tuple[int, int], latent_size: tuple[int, int], tile: int | Literal["auto"],
        overlap: int | None = None, batch: int = 1,
    ) -> TileLayout:
        """The latent tiles for ``tile`` and ``overlap`` in LR input pixels (``"auto"``: :func:`auto_tile_size`;
        0: untiled; overlap ``None``: a quarter of the tile), each side a multiple of the U-Net's downsampling
        factor."""
        latent_per_lr = latent_size[1] / lr_size[1]
        if tile == "auto":
            tile = auto_tile_size(self, latent_size, latent_per_lr, batch)
        if tile == 0:
            return TileLayout.whole(*latent_size)
        step = 2 ** (len(self.unet.config.block_out_channels) - 1)
        side = max(step, round(tile * latent_per_lr) // step * step)
        overlap = side // 4 if overlap is None else min(round(overlap * latent_per_lr), (side - 1) // 2)
        return TileLayout(*latent_size, side, overlap)

    # -- the algorithm --------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        prompt: str | list[str] = DEFAULT_SAMPLER.prompt,
        added_prompt: str = DEFAULT_SAMPLER.added_prompt,
        negative_prompt: str = DEFAULT_SAMPLER.negative_prompt,
        num_steps: int = DEFAULT_SAMPLER.num_steps,
        timesteps: list[int] | None = DEFAULT_SAMPLER.timesteps,
        psr_weight: float = DEFAULT_SAMPLER.psr_weight,
        start_point: Literal["lr", "noise"] = DEFAULT_SAMPLER.start_point,
        guidance_scale: float = DEFAULT_SAMPLER.guidance_scale,
        color_fix: Literal["adain", "wavelet", "none"] | None = DEFAULT_SAMPLER.color_fix,
        wavelet_levels: int | None = DEFAULT_SAMPLER.wavelet_levels,
        upscale: int = DEFAULT_SAMPLER.upscale,
        process_size: int = DEFAULT_SAMPLER.process_size,
        conditioning_scale: float = DEFAULT_SAMPLER.conditioning_scale,
        tile: int | Literal["auto"] = DEFAULT_SAMPLER.tile,
        tile_overlap: int | None = DEFAULT_SAMPLER.tile_overlap,
        generator: Generator = None,
        output_type: Literal["pil", "np", "pt"] = "pil",
        settings: SamplerSettings | None = None,
    ) -> AddSRPipelineOutput:
        """Restore one LR image or a batch of same-sized LR images at ``upscale`` times their size.

        The sampling options are :class:`addsr.sampling.SamplerSettings`' fields, given as keywords or all at once
        as ``settings`` (then leave the keywords at their defaults). ``color_fix`` and ``wavelet_levels`` left at
        ``None`` take the model's own (``default_color_fix``). ``tile`` is the side of the tiles in LR input pixels
        (``"auto"``: chosen for the device, 0: untiled) and ``tile_overlap`` their overlap, also in LR pixels
        (``None``: a quarter of the tile); with one tile the output is exactly the untiled one."""
        settings = _sampler_settings(
            settings, prompt=prompt, added_prompt=added_prompt, negative_prompt=negative_prompt, num_steps=num_steps,
            timesteps=timesteps, psr_weight=psr_weight, start_point=start_point, guidance_scale=guidance_scale,
            color_fix=color_fix, wavelet_levels=wavelet_levels, upscale=upscale, process_size=process_size,
            conditioning_scale=conditioning_scale, tile=tile, tile_overlap=tile_overlap,
        )
        timesteps = settings.timestep_list()
        _check_call(timesteps, output_type, self.schedule.num_train_timesteps)
        final_color_fix = settings.final_color_fix(self.default_color_fix)
        prompt, added_prompt, negative_prompt = settings.prompt, settings.added_prompt, settings.negative_prompt
        psr_weight, start_point, guidance_scale = settings.psr_weight, settings.start_point, settings.guidance_scale
        upscale, process_size, conditioning_scale = settings.upscale, settings.process_size, settings.conditioning_scale
        tile, tile_overlap = settings.tile, settings.tile_overlap
        lr = images_to_tensor(image).to(self.device)
        batch, _, lr_height, lr_width = lr.shape
        prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
        if len(prompts) != batch:
            raise ValueError(f"Got {len(prompts)} prompts for {batch} images")

        # Condition c1: the LR image upscaled. Tags and first embeddings: the whole original LR (released test_addsr.py).
        condition_lr = resize_images(lr, condition_size(lr_height, lr_width, upscale, process_size)).clamp(0, 1)
        if self.tagger is not None:  # one pass of the tagger gives both
            tags, image_embeds = tags_and_embeddings(
                self.tagger, tagger_input(lr, self.tagger.input_size, "bilinear").to(self.device, self.dtype)
            )
            image_embeds = image_embeds.to(self.dtype)
        else:
            tags, image_embeds = [None] * batch, None
        prompts = [build_prompt(tag, text, added_prompt) for tag, text in zip(tags, prompts)]
        text = self.encode_prompts(prompts)
        negative_text = self.encode_prompts([negative_prompt] * batch) if guidance_scale > 1.0 else None

        factor = latent_factor(self.vae)
        latent_size = (condition_lr.shape[-2] // factor, condition_lr.shape[-1] // factor)
        layout = self.tile_layout((lr_height, lr_width), latent_size, tile, tile_overlap, batch)
        if not layout.is_single:
            logger.info("%dx%d input: %d x %d tiles of %d latent pixels (%dx%d latent), overlap %d", lr_width,
                        lr_height, *layout.grid, layout.tile, latent_size[1], latent_size[0], layout.overlap)
        vae_layout = dataclasses.replace(layout, overlap=0)  # its halo gives the context
        vae = TiledVAE(self.vae, vae_layout)
        psr_vae = TiledVAE(self.psr_decoder, vae_layout) if self.psr_decoder is not None else vae
        progress = tqdm(total=len(timesteps) * len(layout.boxes), desc="AddSR", unit="tile", leave=False,
                        disable=not self.progress_bar)
        denoise = TiledDenoiser(
            partial(self._guided_noise, text=text, negative_text=negative_text, guidance_scale=guidance_scale,
                    conditioning_scale=conditioning_scale),
            layout, factor, tiles_per_batch(self, layout, batch * (2 if negative_text is not None else 1)),
            progress.update,
        )

        # Start point (released: start_point "lr"). Random draws, in order: start noise, VAE posterior sample, one
        # re-noise per later step.
        def draw_noise() -> torch.Tensor:
            shape = (batch, self.unet.config.in_channels, *latent_size)
            return randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)

        latents = draw_noise()
        if start_point == "lr":
            lr_latents = vae.encode(condition_lr, generator).to(self.dtype)
            latents = self.schedule.add_noise(lr_latents, latents, timesteps[0])
        predicted_latents = sample_psr(
            denoise, psr_vae.decode, partial(self.image_embeddings, mode="bicubic"), self.schedule, latents,
            condition_lr, image_embeds, timesteps, psr_weight, draw_noise,
        )
        progress.close()

        restored = vae.decode(predicted_latents)
        restored = final_color_fix(restored, condition_lr.float())
        restored = resize_images(restored, (lr_height * upscale, lr_width * upscale)).clamp(0, 1)
        return AddSRPipelineOutput(images=_format(restored, output_type), prompts=prompts)

    def _guided_noise(
        self, latents: torch.Tensor, timestep: int, condition: torch.Tensor, image_embeds: torch.Tensor | None, *,
        text: torch.Tensor, negative_text: torch.Tensor | None, guidance_scale: float, conditioning_scale: float,
    ) -> torch.Tensor:
        """Epsilon for ``latents`` (the batch's images, or several tiles of them one after another), with
        classifier-free guidance when ``negative_text`` is given (both halves get the image embeddings)."""
        repeats = latents.shape[0] // text.shape[0]
        text = text.repeat(repeats, 1, 1)
        image_embeds = image_embeds.repeat(repeats, 1, 1) if image_embeds is not None else None
        if negative_text is None:
            return predict_noise(self.unet, self.controlnet, latents, timestep, text, condition, image_embeds,
                                 conditioning_scale)
        text = torch.cat([negative_text.repeat(repeats, 1, 1), text])
        doubled_embeds = torch.cat([image_embeds] * 2) if image_embeds is not None else None
        noise = predict_noise(self.unet, self.controlnet, torch.cat([latents] * 2), timestep, text,
                              torch.cat([condition] * 2), doubled_embeds, conditioning_scale)
        unconditional, conditional = noise.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)


def sample_psr(
    denoise: Denoise,
    decode: Callable[[torch.Tensor], torch.Tensor],
    embed: Callable[[torch.Tensor], torch.Tensor | None],
    schedule: NoiseSchedule,
    latents: torch.Tensor,
    condition_lr: torch.Tensor,
    image_embeds: torch.Tensor | None,
    timesteps: list[int],
    psr_weight: float,
    draw_noise: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """AddSR's few-step sampler with Prediction-based Self-Refinement (paper Eq. 2 and Sec. 3; the released
    ``AddSRPipeline.__call__`` loop over timesteps 999, 749, 499, 249 with ``PSR_weight``); returns the last z0.

    ``denoise(latents, t, condition, image_embeds)`` predicts epsilon, ``decode`` maps latents to ``[0, 1]`` images
    and ``embed`` gives the image embeddings of a condition; tiling wraps them, not this loop."""
    condition = condition_lr
    predicted = schedule.predict_x0(latents, denoise(latents, timesteps[0], condition, image_embeds), timesteps[0])
    for timestep in timesteps[1:]:
        latents = schedule.add_noise(predicted, draw_noise(), timestep)
        # PSR: condition on the previous estimate blended with the LR, re-embed it.
        if psr_weight != 0:
            condition = decode(predicted).mul_(psr_weight).add_((1 - psr_weight) * condition_lr)
        image_embeds = embed(condition)
        predicted = schedule.predict_x0(latents, denoise(latents, timestep, condition, image_embeds), timestep)
    return predicted


def _move(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move to ``device`` and cast to ``dtype``. Models with no modules to keep in float32 are cast as plain
    ``nn.Module``s: diffusers' own ``to`` warns about its (empty) list of them on every cast."""
    model.to(device)
    if next(model.parameters()).dtype != dtype:
        if getattr(model, "_keep_in_fp32_modules", None):
            model.to(dtype=dtype)
        else:
            torch.nn.Module.to(model, dtype=dtype)
    model.eval()


def _sampler_settings(settings: SamplerSettings | None, **keywords) -> SamplerSettings:
    """``settings``, or the settings the keywords give; both at once is an error (one would be ignored)."""
    if settings is None:
        return SamplerSettings(**keywords)
    changed = sorted(name for name, value in keywords.items() if value != getattr(DEFAULT_SAMPLER, name))
    if changed:
        raise ValueError(f"give the sampling options as settings=... or as keywords, not both (got {changed} too)")
    return settings


def _check_call(timesteps: list[int], output_type: str, num_train_timesteps: int) -> None:
    """What the settings cannot check alone: the timesteps against the model's schedule, and the output type."""
    if any(t >= num_train_timesteps for t in timesteps):
        raise ValueError(f"timesteps must be in [0, {num_train_timesteps}), got {timesteps}")
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")


def _format(images: torch.Tensor, output_type: str) -> list[Image.Image] | np.ndarray | torch.Tensor:
    if output_type == "pt":
        return images.cpu()
    if output_type == "np":
        return images.permute(0, 2, 3, 1).cpu().numpy()
    return tensor_to_pil(images)
