"""Training configurations as dataclasses, loaded with :mod:`addsr.config` (YAML or TOML files, ``--set key=value``
overrides).

Every field has a default (the paper's or the released code's value, see ``docs/training.md``); a file only names
what it changes. Unknown keys are errors that name the key. Relative paths are taken from the current folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import ConfigError, merge_config, parse_overrides, read_config_file
from ..degradations import RealESRGANDegradationConfig
from ..sampling import SamplerSettings
from .discriminator import ProjectedDiscriminatorConfig
from .ta_add import TAADDConfig
from .trainable import DEFAULT_TRAINABLE

MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
ATTENTION = ("sdpa", "eager")
EMA_UPDATES = ("optimizer_step", "micro_step")
TAG_SOURCES = ("tagger", "cache")
DEVICES = ("auto", "cpu")


# -- the configurations ----------------------------------------------------------------------------------------


@dataclass
class TaggerConfig:
    """The RAM tagger that gives prompts (tags) and image embeddings; all unset means the ``ram/`` folder of the
    model folders, if there is one, else no tagger (then the models must have no image cross-attention)."""

    ram: str | None = None
    """A ``ram/`` folder written by ``addsr assemble`` (or ``RAMTagger.save_pretrained``), or RAM's
    ``ram_swin_large_14m.pth``."""
    dape: str | None = None
    """SeeSR's DAPE checkpoint, merged over a ``.pth`` RAM (released training: DAPE)."""
    tag_list: str | None = None
    """RAM's ``ram_tag_list.txt``; needed with a ``.pth`` RAM."""
    tag_thresholds: str | None = None
    """RAM's ``ram_tag_list_threshold.txt``; optional."""


@dataclass
class HRSource:
    """A folder of HR images (searched recursively) or a text file listing them, optionally cut to its first images."""

    path: str = ""
    first: int | None = None
    """Keep only the first ``first`` images of the sorted listing (released: the first 20 000 of LSDIR)."""

    def __post_init__(self) -> None:
        if self.first is not None and self.first < 1:
            raise ValueError(f"'first' of {self.path} must be at least 1 or null, got {self.first}")


@dataclass
class TagCacheConfig:
    """Prompts made once (``addsr train tags``): the tags of each USM-sharpened HR image, cached in a JSON file."""

    file: str | None = None
    """The JSON file of the cached tags, written by ``addsr train tags`` and read by training."""
    tagger: TaggerConfig = field(default_factory=TaggerConfig)
    """The tagger that makes them; released: plain RAM (``ram`` + ``tag_list`` + ``tag_thresholds``, no DAPE)."""
    batch_size: int = 8
    """Images tagged at once."""

    def __post_init__(self) -> None:
        _check_positive("tag_cache.batch_size", self.batch_size)


@dataclass
class CropConfig:
    """HR training images and their random crops."""

    hr: list[str | HRSource] = field(default_factory=list)
    """Folders of HR images (searched recursively) and/or text files listing image paths, one a line; an entry may be
    ``{path: ..., first: N}`` to keep the first N images of the sorted listing."""
    crop_size: int = 512
    """Side of the random square HR crop; a multiple of 8 (and of the degradation scale)."""
    flip: bool = True
    """Random horizontal flips (released: yes; no rotations)."""
    num_workers: int = 4
    """Data loader worker processes (image decoding and cropping)."""

    def __post_init__(self) -> None:
        if self.crop_size <= 0 or self.crop_size % 8:
            raise ValueError(f"crop_size must be a positive multiple of 8, got {self.crop_size}")
        if any(isinstance(source, HRSource) and not source.path for source in self.hr):
            raise ValueError("every entry of hr needs a path ({path: ..., first: N})")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be at least 0, got {self.num_workers}")


@dataclass
class DataConfig(CropConfig):
    """HR training images, how they are cropped and degraded, and how prompts are made."""

    degradation: RealESRGANDegradationConfig = field(default_factory=RealESRGANDegradationConfig)
    """Real-ESRGAN second-order degradation that makes the LR on the fly (the values of the released
    `utils_data/make_paired_data.py`, ``args_degradation``)."""
    prompt_drop_probability: float = 0.5
    """Probability, per sample, of an empty prompt instead of the tags (released: 0.5)."""
    tag_source: Literal["tagger", "cache"] = "tagger"
    """``tagger``: the run's tagger tags each crop on the fly (``tags_from``); ``cache``: the tags of
    ``tag_cache.file``, made once by ``addsr train tags`` (released: plain RAM tags of the USM-sharpened HR, made
    offline)."""
    tags_from: Literal["hr", "lr"] = "hr"
    """With ``tag_source: tagger``, the image tagged for the prompt: the HR crop (target) or the LR."""
    tag_cache: TagCacheConfig = field(default_factory=TagCacheConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        scale = self.degradation.scale
        if self.crop_size % scale:
            raise ValueError(
                f"crop_size must be a positive multiple of 8 and of the scale {scale}, got {self.crop_size}"
            )
        if not 0.0 <= self.prompt_drop_probability <= 1.0:
            raise ValueError(f"prompt_drop_probability must be in [0, 1], got {self.prompt_drop_probability}")
        _check_choice("tags_from", self.tags_from, ("hr", "lr"))
        _check_choice("tag_source", self.tag_source, TAG_SOURCES)
        if self.tag_source == "cache" and self.tag_cache.file is None:
            raise ValueError("tag_source: cache needs tag_cache.file (the JSON file `addsr train tags` writes)")


@dataclass
class OptimizationConfig:
    """AdamW, clipping, EMA, batch, precision and length of a run; defaults are the paper's TA-ADD values."""

    learning_rate: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    """Clip the trainable student parameters' gradient norm to this."""
    lr_warmup_steps: int = 0
    """Linear warm-up of the learning rate; 0 is the released constant rate."""
    final_learning_rate: float | None = None
    """After the warm-up, cosine decay from ``learning_rate`` to this at ``max_steps``; ``null``: constant
    (released)."""
    ema_decay: float | None = 0.99
    """EMA of the trainable weights, exported in checkpoints; ``null`` (TOML: ``"none"``) exports the raw weights."""
    ema_update: Literal["optimizer_step", "micro_step"] = "optimizer_step"
    """When the EMA is updated: after every optimiser step, or after every micro-step (released: with gradient
    accumulation the average then takes the same weights several times)."""
    batch_size: int = 6
    """Samples per device (process) and micro-step; the total batch is ``batch_size * processes * accumulation``."""
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    """Autocast for the trained models; the frozen models are cast to this type (fp32 master weights)."""
    gradient_checkpointing: bool = False
    """Recompute activations of the U-Net, ControlNet and VAE decoder in the backward pass to save memory."""
    attention: Literal["sdpa", "eager"] = "sdpa"
    """Attention of the U-Nets and ControlNets: PyTorch's scaled-dot-product kernels (flash / memory-efficient on
    GPUs), or the plain softmax(QK^T)V that materialises every attention matrix."""
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """The student's optimiser: torch AdamW, or bitsandbytes' 8-bit AdamW (a quarter of the state memory; needs the
    ``bitsandbytes`` extra)."""
    offload_frozen: bool = False
    """Keep the frozen teacher and the tagger on the CPU and move them to the device only while they run."""
    max_steps: int = 50_000
    """Optimiser steps."""
    seed: int = 0
    """Seeds the data order, the crops and every random draw of a step (with the process index and step)."""
    find_unused_parameters: bool = False
    """DDP's ``find_unused_parameters`` for multi-process runs, for trainable sets with unused parameters."""
    device: Literal["auto", "cpu"] = "auto"
    """``auto``: accelerate's choice (each process's GPU, else MPS or the CPU); ``cpu`` also where a GPU exists."""

    def __post_init__(self) -> None:
        _check_positive("learning_rate", self.learning_rate)
        _check_positive("batch_size", self.batch_size)
        _check_positive("gradient_accumulation_steps", self.gradient_accumulation_steps)
        _check_positive("max_steps", self.max_steps)
        _check_positive("max_grad_norm", self.max_grad_norm)
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or null, got {self.ema_decay}")
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("attention", self.attention, ATTENTION)
        _check_choice("ema_update", self.ema_update, EMA_UPDATES)
        if self.lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps must be at least 0, got {self.lr_warmup_steps}")
        if self.final_learning_rate is not None and not 0 <= self.final_learning_rate <= self.learning_rate:
            raise ValueError(
                f"final_learning_rate must be in [0, learning_rate] or null, got {self.final_learning_rate}"
            )
        _check_choice("device", self.device, DEVICES)


@dataclass
class RunOutputConfig:
    """Where a run writes, how often it checkpoints and logs, and whether it resumes."""

    output_dir: str = "runs/addsr"
    checkpoint_every: int = 5000
    """Optimiser steps between checkpoints (released: 5000); the last step is always saved."""
    keep_last: int | None = 3
    """Checkpoints kept; older ones are deleted. ``null`` keeps all."""
    resume: str | None = "auto"
    """``auto``: from the newest complete checkpoint in ``output_dir``, if any; a checkpoint folder; or ``null``."""
    log_every: int = 10
    """Optimiser steps averaged into one log point (TensorBoard, else a log line)."""
    tensorboard: bool = True
    """Write TensorBoard event files to ``output_dir/logs`` (needs the ``tensorboard`` package)."""
    progress_bar: bool = True

    def __post_init__(self) -> None:
        _check_positive("checkpoint_every", self.checkpoint_every)
        _check_positive("log_every", self.log_every)
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"keep_last must be at least 1 or null, got {self.keep_last}")


@dataclass
class OutputConfig(RunOutputConfig):
    """Where a teacher or distillation run writes, and its validation grids."""

    validation_every: int = 1000
    """Optimiser steps between validation grids; 0 turns validation off."""
    validation_images: list[str] = field(default_factory=list)
    """LR images (files or folders) upscaled by the current (EMA) model for the validation grids."""
    validation_sampler: SamplerSettings = field(default_factory=SamplerSettings)
    """How the validation images are upscaled (:class:`addsr.sampling.SamplerSettings`: ``num_steps``,
    ``process_size``, ``psr_weight``, ...); the released inference's settings by default."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.validation_every < 0:
            raise ValueError(f"validation_every must be at least 0, got {self.validation_every}")


@dataclass
class TeacherModelConfig:
    """The models of teacher training (SeeSR recipe)."""

    base_model: str | None = None
    """Stable Diffusion 2 base folder: ``vae/ text_encoder/ tokenizer/ scheduler/`` and the ``unet/`` to start from."""
    init_model: str | None = None
    """A folder with ``unet/`` and ``controlnet/`` to continue from (e.g. SeeSR); unset: the base U-Net with new image
    attentions and a ControlNet copied from it."""
    from_scratch: bool = False
    """Randomly initialise the U-Net from ``base_model/unet/config.json`` (needs ``train_all``)."""
    vae_model: str | None = None
    """A folder whose ``vae/`` replaces ``init_model``'s and ``base_model``'s, to move a trained teacher onto a new
    VAE (its latent space differs, so the U-Net and ControlNet must be trained on)."""
    tagger: TaggerConfig = field(default_factory=TaggerConfig)

    def __post_init__(self) -> None:
        if self.from_scratch and self.init_model is not None:
            raise ValueError("model.from_scratch starts from a random U-Net: leave model.init_model unset")


@dataclass
class DistillationModelConfig:
    """The models of TA-ADD distillation."""

    teacher_model: str | None = None
    """The frozen teacher: a folder with ``unet/`` and ``controlnet/`` (the SeeSR release)."""
    student_model: str | None = None
    """Where the student starts; unset: the teacher's weights (as released)."""
    base_model: str | None = None
    """Stable Diffusion 2 base folder for the parts the model folders lack (``vae/ text_encoder/ tokenizer/
    scheduler/``)."""
    tagger: TaggerConfig = field(default_factory=TaggerConfig)


def _teacher_optimization() -> OptimizationConfig:
    """SeeSR's released recipe: lr 5e-5, 2 per GPU with 2 accumulation steps (32 on its 8 GPUs), no EMA."""
    return OptimizationConfig(learning_rate=5e-5, ema_decay=None, batch_size=2, gradient_accumulation_steps=2,
                              max_steps=100_000)


@dataclass
class TeacherTrainingConfig:
    """Teacher training, the SeeSR recipe: epsilon-prediction loss on LR-conditioned samples."""

    model: TeacherModelConfig = field(default_factory=TeacherModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimization: OptimizationConfig = field(default_factory=_teacher_optimization)
    output: OutputConfig = field(
        default_factory=lambda: OutputConfig(output_dir="runs/teacher", checkpoint_every=10_000)
    )
    trainable: tuple[str, ...] = ("unet.image_attentions", "controlnet")
    """Patterns ``unet.<substring>`` / ``controlnet.<substring>``, or ``unet`` / ``controlnet`` for a whole model.
    SeeSR: the whole ControlNet and the U-Net's image attentions."""
    train_all: bool = False
    """Train every parameter of the U-Net and the ControlNet (for a model trained from scratch)."""

    def __post_init__(self) -> None:
        if self.model.from_scratch and not self.train_all:
            raise ValueError("model.from_scratch needs train_all: true (a random U-Net must be trained as a whole)")


@dataclass
class DistillationConfig:
    """TA-ADD distillation of a student from a frozen teacher (AddSR)."""

    model: DistillationModelConfig = field(default_factory=DistillationModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    output: OutputConfig = field(default_factory=lambda: OutputConfig(output_dir="runs/distill"))
    trainable: tuple[str, ...] = DEFAULT_TRAINABLE
    """Released: the image attentions of both networks and the ControlNet's condition embedding."""
    ta_add: TAADDConfig = field(default_factory=TAADDConfig)
    discriminator: ProjectedDiscriminatorConfig = field(default_factory=ProjectedDiscriminatorConfig)
    discriminator_learning_rate: float | None = None
    """AdamW learning rate of the discriminator heads; unset: ``optimization.learning_rate`` (released)."""


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def load_data_config(path: str | Path, overrides: Sequence[str] = ()) -> DataConfig:
    """The ``data`` section of a teacher or distillation config file, then ``data.*`` overrides."""
    section = read_config_file(path).get("data") or {}
    config = merge_config(DataConfig(), section, source=str(path), prefix="data.")
    nested = parse_overrides(overrides)
    others = sorted(set(nested) - {"data"})
    if others:
        raise ConfigError(f"--set: only data.* keys apply here, got {', '.join(others)}")
    return merge_config(config, nested.get("data", {}), source="--set", prefix="data.")
