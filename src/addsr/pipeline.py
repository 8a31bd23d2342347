"""AddSR inference: LR -> x4 HR in 1 to 4 student steps with Prediction-based Self-Refinement (SPEC section 2).

The whole algorithm is :meth:`AddSRPipeline.__call__`; the helpers above it size the condition image, build
prompts and move models around.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from .colorfix import ColorFix
from .devices import resolve_device, resolve_dtype
from .diffusion import NoiseSchedule, student_timesteps
from .io import images_to_tensor, resize_images, tensor_to_pil
from .models import ControlNet, UNet
from .tagging import Tagger

logger = logging.getLogger(__name__)

DEFAULT_ADDED_PROMPT = "clean, high-resolution, 8k, extremely detailed, best quality, sharp"
DEFAULT_NEGATIVE_PROMPT = "dotted, noise, blur, lowres, smooth"
BASE_COMPONENTS = ("vae", "text_encoder", "tokenizer", "scheduler")
DEFAULT_MODEL_DIR = Path(__file__).with_name("default_model")
"""The small AddSR trained by this project and shipped in the package (docs/small-model.md)."""
ImageInput = Image.Image | np.ndarray | torch.Tensor | list
Generator = torch.Generator | list[torch.Generator] | None


@dataclass
class AddSRPipelineOutput:
    """Restored images (PIL list, ``[B, H, W, 3]`` float array or ``[B, 3, H, W]`` tensor) and the prompts used."""

    images: list[Image.Image] | np.ndarray | torch.Tensor
    prompts: list[str]


def condition_size(height: int, width: int, upscale: int = 4, process_size: int = 512) -> tuple[int, int]:
    """Size of the ControlNet condition for an LR image (SPEC 2.1): short side at least
    ``process_size / upscale`` before upscaling, then each side floored to a multiple of 8."""
    min_side = process_size // upscale
    if height < min_side or width < min_side:
        scale = min_side / min(height, width)
        height, width = int(scale * height), int(scale * width)
    return height * upscale // 8 * 8, width * upscale // 8 * 8


def build_prompt(tags: str | None, prompt: str, added_prompt: str) -> str:
    """The released prompt template ``"{tags}, {prompt}," + added_prompt``; without a tagger the tags are left out."""
    head = f"{tags}, {prompt}," if tags is not None else f"{prompt},"
    return head + added_prompt


def save_base_components(
    model_dir: Path, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
    schedule: NoiseSchedule, tagger: Tagger | None,
) -> None:
    """Write ``vae/ text_encoder/ tokenizer/ scheduler/`` and, when the tagger can save itself, ``ram/``."""
    vae.save_pretrained(model_dir / "vae")
    text_encoder.save_pretrained(model_dir / "text_encoder")
    tokenizer.save_pretrained(model_dir / "tokenizer")
    DDPMScheduler.from_config(schedule.config).save_pretrained(model_dir / "scheduler")
    if hasattr(tagger, "save_pretrained"):
        tagger.save_pretrained(model_dir / "ram")


def _locate(name: str, model_dir: Path, base_model_dir: Path | None) -> Path:
    for folder in (model_dir, base_model_dir):
        if folder is not None and (folder / name).is_dir():
            return folder / name
    where = f"{model_dir}" + (f" or {base_model_dir}" if base_model_dir else "")
    raise FileNotFoundError(
        f"No '{name}/' folder in {where}. Pass base_model_dir (CLI: --base-model) pointing to a Stable Diffusion 2 "
        "base folder, or assemble a complete model folder with `addsr assemble`."
    )


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
        self.default_color_fix = color_fix or ColorFix()
        self.progress_bar = True
        self.device, self.dtype = torch.device("cpu"), torch.float32

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
        ``tagger``, else built from the RAM/DAPE files, else ``model_dir/ram``. The default colour fix comes from
        ``model_dir/color_fix.json`` when the folder has one, else it is the released AdaIN."""
        if model_dir is None and not (DEFAULT_MODEL_DIR / "unet").is_dir():
            raise FileNotFoundError(
                f"the default model is missing from this installation ({DEFAULT_MODEL_DIR}): reinstall addsr, "
                "or pass a model folder"
            )
        model_dir = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
        base_model_dir = Path(base_model_dir) if base_model_dir is not None else None
        for required in ("unet", "controlnet"):
            if not (model_dir / required).is_dir():
                raise FileNotFoundError(f"{model_dir} has no '{required}/' folder: is it an AddSR or SeeSR model?")
        paths = {name: _locate(name, model_dir, base_model_dir) for name in BASE_COMPONENTS}
        pipe = cls(
            unet=UNet.from_pretrained(model_dir / "unet"),
            controlnet=ControlNet.from_pretrained(model_dir / "controlnet"),
            vae=AutoencoderKL.from_pretrained(paths["vae"]),
            text_encoder=CLIPTextModel.from_pretrained(paths["text_encoder"]),
            tokenizer=CLIPTokenizer.from_pretrained(paths["tokenizer"]),
            schedule=NoiseSchedule.from_pretrained(paths["scheduler"]),
            tagger=tagger or _load_tagger(model_dir, ram, dape, ram_tag_list, ram_tag_thresholds),
            color_fix=ColorFix.from_model_dir(model_dir),
        )
        return pipe.to(device, dtype)

    def save_pretrained(self, model_dir: str | Path) -> Path:
        """Write every part into one folder (safetensors) that :meth:`from_pretrained` loads alone."""
        model_dir = Path(model_dir)
        self.unet.save_pretrained(model_dir / "unet")
        self.controlnet.save_pretrained(model_dir / "controlnet")
        save_base_components(model_dir, self.vae, self.text_encoder, self.tokenizer, self.schedule, self.tagger)
        if self.default_color_fix != ColorFix():
            self.default_color_fix.save(model_dir)
        return model_dir

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> AddSRPipeline:
        """Move to ``device`` (auto: CUDA, MPS, CPU) in ``dtype`` (auto: float32 on CPU, float16 elsewhere).
        The VAE stays in float32 under float16, where its decoder overflows."""
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        vae_dtype = torch.float32 if self.dtype == torch.float16 else self.dtype
        for model in (self.unet, self.controlnet, self.text_encoder):
            _move(model, self.device, self.dtype)
        _move(self.vae, self.device, vae_dtype)
        if hasattr(self.tagger, "to"):
            self.tagger.to(self.device, self.dtype)
            getattr(self.tagger, "eval", lambda: None)()
        return self

    # -- building blocks ------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text embeddings, padded to the tokenizer's maximum length."""
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor | None:
        """Tagger embeddings for the image cross-attention, or None for a model without it."""
        if self.tagger is None:
            return None
        return self.tagger.embeddings(images.to(self.device, self.dtype)).to(self.dtype)

    def encode_image(self, images: torch.Tensor, generator: Generator) -> torch.Tensor:
        """Scaled VAE latent of ``[0, 1]`` images, sampled from the posterior."""
        vae_input = (images * 2 - 1).to(self.vae.dtype)
        latents = self.vae.encode(vae_input).latent_dist.sample(generator)
        return latents.to(self.dtype) * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[0, 1]`` from scaled latents."""
        decoded = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        return (decoded.float().clamp(-1, 1) + 1) / 2

    def predict_noise(
        self, latents: torch.Tensor, timestep: int, text: torch.Tensor, condition: torch.Tensor,
        image_embeds: torch.Tensor | None, conditioning_scale: float,
    ) -> torch.Tensor:
        """Epsilon from the ControlNet-guided U-Net at one timestep."""
        image_kwargs = {"image_encoder_hidden_states": image_embeds} if image_embeds is not None else {}
        control = self.controlnet(
            latents, timestep, encoder_hidden_states=text, controlnet_cond=condition.to(self.dtype),
            conditioning_scale=conditioning_scale, return_dict=False, **image_kwargs,
        )
        down_residuals, mid_residual = control[0], control[1]
        return self.unet(
            latents, timestep, encoder_hidden_states=text, down_block_additional_residuals=down_residuals,
            mid_block_additional_residual=mid_residual, return_dict=False, **image_kwargs,
        )[0]

    # -- the algorithm --------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        prompt: str | list[str] = "",
        added_prompt: str = DEFAULT_ADDED_PROMPT,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        num_steps: int = 4,
        timesteps: list[int] | None = None,
        psr_weight: float = 0.4,
        start_point: Literal["lr", "noise"] = "lr",
        guidance_scale: float = 0.0,
        color_fix: Literal["adain", "wavelet", "none"] | None = None,
        wavelet_levels: int | None = None,
        upscale: int = 4,
        process_size: int = 512,
        conditioning_scale: float = 1.0,
        generator: Generator = None,
        output_type: Literal["pil", "np", "pt"] = "pil",
    ) -> AddSRPipelineOutput:
        """Restore one LR image or a batch of same-sized LR images at ``upscale`` times their size.

        ``color_fix`` and ``wavelet_levels`` left at ``None`` take the model's own (``default_color_fix``)."""
        timesteps = list(timesteps) if timesteps is not None else student_timesteps(num_steps)
        _check_arguments(timesteps, psr_weight, start_point, output_type, self.schedule.num_train_timesteps)
        final_color_fix = self.default_color_fix.replace(color_fix, wavelet_levels)
        lr = images_to_tensor(image).to(self.device)
        batch, _, lr_height, lr_width = lr.shape
        prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
        if len(prompts) != batch:
            raise ValueError(f"Got {len(prompts)} prompts for {batch} images")

        # Condition c1: the LR image upscaled (SPEC 2.1). Tags and first embeddings: the original LR (2.2, 2.3).
        condition_lr = resize_images(lr, condition_size(lr_height, lr_width, upscale, process_size)).clamp(0, 1)
        tagger_input = self._tagger_resize(lr, "bilinear")
        tags = self.tagger.tags(tagger_input.to(self.dtype)) if self.tagger is not None else [None] * batch
        prompts = [build_prompt(tag, text, added_prompt) for tag, text in zip(tags, prompts)]
        image_embeds = self.image_embeddings(tagger_input)
        use_cfg = guidance_scale > 1.0
        text = self.encode_prompts(prompts)
        if use_cfg:
            text = torch.cat([self.encode_prompts([negative_prompt] * batch), text])

        # Start point (2.4). Random draws, in order: start noise, VAE posterior sample, one re-noise per later step.
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        latent_shape = (batch, self.unet.config.in_channels, *(s // factor for s in condition_lr.shape[-2:]))
        latents = randn_tensor(latent_shape, generator=generator, device=self.device, dtype=self.dtype)
        if start_point == "lr":
            lr_latents = self.encode_image(condition_lr, generator)
            latents = self.schedule.add_noise(lr_latents, latents, timesteps[0])

        condition = condition_lr
        for index, timestep in enumerate(tqdm(timesteps, desc="AddSR steps", disable=not self.progress_bar)):
            if index > 0:
                # PSR (2.6): condition on the previous estimate blended with the LR, re-embed it.
                if psr_weight != 0:
                    estimate = self.decode_latents(predicted_latents)
                    condition = psr_weight * estimate + (1 - psr_weight) * condition_lr
                image_embeds = self.image_embeddings(self._tagger_resize(condition, "bicubic"))
            noise = self._guided_noise(latents, timestep, text, condition, image_embeds, use_cfg, guidance_scale,
                                       conditioning_scale)
            predicted_latents = self.schedule.predict_x0(latents, noise, timestep)
            if index + 1 < len(timesteps):
                fresh_noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=self.dtype)
                latents = self.schedule.add_noise(predicted_latents, fresh_noise, timesteps[index + 1])

        restored = self.decode_latents(predicted_latents)
        restored = final_color_fix(restored, condition_lr.float())
        restored = resize_images(restored, (lr_height * upscale, lr_width * upscale)).clamp(0, 1)
        return AddSRPipelineOutput(images=_format(restored, output_type), prompts=prompts)

    def _guided_noise(
        self, latents: torch.Tensor, timestep: int, text: torch.Tensor, condition: torch.Tensor,
        image_embeds: torch.Tensor | None, use_cfg: bool, guidance_scale: float, conditioning_scale: float,
    ) -> torch.Tensor:
        """Epsilon, with classifier-free guidance when ``use_cfg`` (both halves get the image embeddings)."""
        if not use_cfg:
            return self.predict_noise(latents, timestep, text, condition, image_embeds, conditioning_scale)
        doubled_embeds = torch.cat([image_embeds] * 2) if image_embeds is not None else None
        noise = self.predict_noise(torch.cat([latents] * 2), timestep, text, torch.cat([condition] * 2),
                                   doubled_embeds, conditioning_scale)
        unconditional, conditional = noise.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def _tagger_resize(self, images: torch.Tensor, mode: Literal["bilinear", "bicubic"]) -> torch.Tensor:
        """To the tagger's input size as the released code does: bilinear for the LR (torchvision 0.15's tensor
        ``Resize``, no antialiasing), bicubic for PSR estimates (``F.interpolate``)."""
        if self.tagger is None:
            return images
        size = (self.tagger.input_size, self.tagger.input_size)
        return torch.nn.functional.interpolate(images.float(), size=size, mode=mode, align_corners=False)


def _move(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move to ``device`` and cast only when the dtype differs (diffusers warns on every cast)."""
    model.to(device)
    if next(model.parameters()).dtype != dtype:
        model.to(dtype=dtype)
    model.eval()


def _check_arguments(
    timesteps: list[int], psr_weight: float, start_point: str, output_type: str, num_train_timesteps: int
) -> None:
    if not timesteps or any(not 0 <= t < num_train_timesteps for t in timesteps):
        raise ValueError(f"timesteps must be a non-empty list in [0, {num_train_timesteps}), got {timesteps}")
    if any(a <= b for a, b in zip(timesteps, timesteps[1:])):
        raise ValueError(f"timesteps must decrease, got {timesteps}")
    if not 0.0 <= psr_weight <= 1.0:
        raise ValueError(f"psr_weight must be in [0, 1], got {psr_weight}")
    if start_point not in ("lr", "noise"):
        raise ValueError(f"start_point must be 'lr' or 'noise', got {start_point!r}")
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")


def _format(images: torch.Tensor, output_type: str) -> list[Image.Image] | np.ndarray | torch.Tensor:
    if output_type == "pt":
        return images.cpu()
    if output_type == "np":
        return images.permute(0, 2, 3, 1).cpu().numpy()
    return tensor_to_pil(images)


def _load_tagger(
    model_dir: Path, ram: Any, dape: Any, tag_list: Any, tag_thresholds: Any
) -> Tagger | None:
    """A RAM tagger from checkpoint files, else from ``model_dir/ram``, else None."""
    if ram is None and dape is not None:
        raise ValueError("dape=... is loaded over RAM: pass ram=PATH_TO_ram_swin_large_14m.pth too")
    if ram is None and not (model_dir / "ram").is_dir():
        return None
    from .tagging import RAMTagger

    if ram is None:
        return RAMTagger.from_pretrained(model_dir / "ram")
    if tag_list is None:
        raise ValueError("ram=... needs ram_tag_list=PATH (RAM's ram_tag_list.txt) as well")
    return RAMTagger.from_checkpoints(ram, dape=dape, tag_list=tag_list, tag_thresholds=tag_thresholds)
