"""Building the models a training run needs from the folders and files named in its configuration."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..model_folder import (
    NETWORKS,
    BaseComponents,
    base_component_paths,
    load_base_components,
    load_tagger,
    locate,
    model_folders,
    network_paths,
    save_base_components,
)
from ..models import ControlNet, UNet
from ..tagging import Tagger
from .config import DataConfig, DistillationModelConfig, OptimizationConfig, TaggerConfig, TeacherModelConfig
from .data import TrainingBatchMaker
from .tags import load_cached_tags
from .trainable import trainable_parameters

logger = logging.getLogger(__name__)

WHOLE_MODELS = NETWORKS
BASE_MODEL_HINT = (
    "Set model.base_model to a Stable Diffusion 2 base folder (stabilityai/stable-diffusion-2-base) or point the "
    "model folders at complete model folders."
)


@dataclass
class FrozenComponents(BaseComponents):
    """The parts a run uses but does not train: Stable Diffusion 2's VAE, text encoder, tokenizer and schedule,
    and the tagger."""

    tagger: Tagger | None = None

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``vae/ text_encoder/ tokenizer/ scheduler/`` and, when the tagger can save itself, ``ram/``."""
        folder = Path(folder)
        save_base_components(folder, self, self.tagger)
        if self.tagger is not None and not hasattr(self.tagger, "save_pretrained"):
            logger.warning("The tagger (%s) cannot save itself: checkpoints will lack ram/", type(self.tagger).__name__)
        return folder


def move_to(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move to ``device``; cast only when the dtype differs (diffusers warns on every cast)."""
    module.to(device)
    parameter = next(module.parameters(), None)
    if parameter is not None and parameter.dtype != dtype:
        module.to(dtype=dtype)
    return module


def prompt_batches(config: DataConfig, frozen: FrozenComponents) -> Callable[[list[Path]], TrainingBatchMaker]:
    """The batch maker of teacher and distillation runs (degraded LR, prompts and their text embeddings) for a run's
    HR images: prompts from the cached tags with ``tag_source: cache``, else from the (possibly offloaded) tagger."""

    def make(images: list[Path]) -> TrainingBatchMaker:
        cached_tags = load_cached_tags(config.tag_cache.file, images) if config.tag_source == "cache" else None
        return TrainingBatchMaker(config, frozen.tokenizer, frozen.text_encoder, frozen.tagger, cached_tags)

    return make


def prepare_students(models: Sequence[nn.Module], frozen: FrozenComponents, optimization: OptimizationConfig) -> None:
    """The attention kernels of the trained U-Net and ControlNet and, when asked, gradient checkpointing of them and
    of the frozen VAE (whose decoder the TA-ADD loss back-propagates through)."""
    set_attention(models, optimization.attention)
    if optimization.gradient_checkpointing:
        for model in (*models, frozen.vae):
            model.enable_gradient_checkpointing()


def set_attention(models: Sequence[nn.Module], kind: str) -> None:
    """``sdpa``: PyTorch's ``scaled_dot_product_attention`` (diffusers' default); ``eager``: softmax(QK^T)V written
    out, which holds every attention matrix in memory."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    for model in models:
        model.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def load_frozen_components(
    folders: Sequence[Path], tagger: TaggerConfig, vae_model: Path | None = None
) -> FrozenComponents:
    """The VAE, text encoder, tokenizer and schedule from the first of ``folders`` that has each (logged, since a
    model folder earlier in the list overrides the base model's), the VAE from ``vae_model`` when set, and the
    tagger (:mod:`addsr.model_folder`'s rules)."""
    paths = base_component_paths(folders, BASE_MODEL_HINT, vae_folder=vae_model)
    logger.info("Frozen parts: %s", ", ".join(f"{name} from {path}" for name, path in paths.items()))
    return FrozenComponents(
        **vars(load_base_components(paths)),
        tagger=load_tagger(folders, tagger.ram, tagger.dape, tagger.tag_list, tagger.tag_thresholds),
    )


def embedding_width(tagger: Tagger) -> int:
    """Width of the tagger's image embeddings (RAM: 512), from one forward pass on a blank image."""
    parameter = next(iter(tagger.parameters()), None) if isinstance(tagger, nn.Module) else None
    device = parameter.device if parameter is not None else torch.device("cpu")
    with torch.no_grad():
        blank = torch.zeros(1, 3, tagger.input_size, tagger.input_size, device=device)
        return int(tagger.embeddings(blank).shape[-1])


def load_models(folder: str | Path) -> tuple[UNet, ControlNet]:
    """The ``unet/`` and ``controlnet/`` of a SeeSR/AddSR model folder."""
    paths = network_paths(folder)
    return UNet.from_pretrained(paths["unet"]), ControlNet.from_pretrained(paths["controlnet"])


def new_teacher_models(base_unet: Path, tagger: Tagger | None, from_scratch: bool) -> tuple[UNet, ControlNet]:
    """SeeSR's starting point: the Stable Diffusion U-Net (or a random one of its shape) with new image attentions
    when there is a tagger, and a ControlNet copied from its encoder."""
    image_kwargs = {"use_image_cross_attention": tagger is not None}
    if tagger is not None:
        image_kwargs["image_cross_attention_dim"] = embedding_width(tagger)
    if from_scratch:
        unet = UNet.from_config(UNet.load_config(base_unet), **image_kwargs)
    else:
        unet = UNet.from_pretrained(base_unet, **image_kwargs)
    return unet, ControlNet.from_unet(unet)


def load_teacher_training_models(
    config: TeacherModelConfig,
) -> tuple[UNet, ControlNet, FrozenComponents]:
    """The U-Net and ControlNet to train (from ``init_model``, else from the base U-Net) and the frozen parts."""
    folders = model_folders(config.init_model, config.base_model)
    vae_model = Path(config.vae_model) if config.vae_model is not None else None
    frozen = load_frozen_components(folders, config.tagger, vae_model)
    if config.init_model is not None:
        unet, controlnet = load_models(config.init_model)
    else:
        base_unet = locate("unet", model_folders(config.base_model), BASE_MODEL_HINT)
        unet, controlnet = new_teacher_models(base_unet, frozen.tagger, config.from_scratch)
    return unet, controlnet, frozen


@dataclass
class DistillationModels:
    student_unet: UNet
    student_controlnet: ControlNet
    teacher_unet: UNet
    teacher_controlnet: ControlNet
    frozen: FrozenComponents


def load_distillation_models(config: DistillationModelConfig) -> DistillationModels:
    """The frozen teacher, the student (a copy of the teacher unless ``student_model`` is set) and the frozen parts."""
    if config.teacher_model is None:
        raise ValueError("Set model.teacher_model to the teacher's folder (unet/, controlnet/), e.g. the SeeSR release")
    folders = model_folders(config.student_model, config.teacher_model, config.base_model)
    teacher_unet, teacher_controlnet = load_models(config.teacher_model)
    if config.student_model is None:
        student_unet, student_controlnet = copy.deepcopy(teacher_unet), copy.deepcopy(teacher_controlnet)
    else:
        student_unet, student_controlnet = load_models(config.student_model)
    return DistillationModels(
        student_unet=student_unet,
        student_controlnet=student_controlnet,
        teacher_unet=teacher_unet.requires_grad_(False),
        teacher_controlnet=teacher_controlnet.requires_grad_(False),
        frozen=load_frozen_components(folders, config.tagger),
    )


def select_trainable(unet: nn.Module, controlnet: nn.Module, patterns: Sequence[str]) -> dict[str, nn.Parameter]:
    """Freeze ``unet`` and ``controlnet`` except the parameters chosen by ``patterns`` (``unet`` / ``controlnet`` for
    a whole model, else see :func:`addsr.training.trainable_parameters`); return those, keyed ``unet.<name>`` /
    ``controlnet.<name>``."""
    models = {"unet": unet, "controlnet": controlnet}
    selected: dict[str, nn.Parameter] = {}
    for pattern in patterns:
        if pattern in models:
            selected |= {f"{pattern}.{name}": p for name, p in models[pattern].named_parameters()}
            continue
        try:
            selected |= trainable_parameters(unet, controlnet, [pattern])
        except ValueError as error:
            uses_image_attention = getattr(unet.config, "use_image_cross_attention", False)
            hint = "" if uses_image_attention or "image_attentions" not in pattern else (
                " (the models have no image cross-attention because no tagger is configured: set model.tagger.ram)"
            )
            raise ValueError(f"{error}{hint}") from None
    if not selected:
        raise ValueError("The trainable set is empty: list patterns such as 'unet.image_attentions' or 'controlnet'")
    unet.requires_grad_(False)
    controlnet.requires_grad_(False)
    for parameter in selected.values():
        parameter.requires_grad_(True)
    return selected
