"""Training: the SeeSR-style teacher and TA-ADD distillation of the AddSR student, on one device or many."""

from ..config import ConfigError, load_config
from .checkpoints import TrainingState, list_checkpoints, resolve_resume
from .components import FrozenComponents, select_trainable
from .config import (
    DataConfig,
    DistillationConfig,
    DistillationModelConfig,
    HRSource,
    OptimizationConfig,
    OutputConfig,
    TagCacheConfig,
    TaggerConfig,
    TeacherModelConfig,
    TeacherTrainingConfig,
    load_data_config,
)
from .data import HRCropDataset, ShardedSampler, TrainingBatch, TrainingBatchMaker
from .decoder import DecoderTrainingConfig, train_decoder
from .diffaug import diff_augment
from .discriminator import ProjectedDiscriminator, ProjectedDiscriminatorConfig, create_backbone, load_backbone_weights
from .distill import DistillationObjective, train_distill
from .ema import ExponentialMovingAverage
from .runner import Objective, TrainingRun
from .ta_add import (
    DiscriminatorLosses,
    GeneratorLosses,
    TAADDConfig,
    TAADDLoss,
    TAADDStep,
    TimestepAdaptiveWeight,
    discriminator_hinge_loss,
    generator_adversarial_loss,
)
from .tags import load_cached_tags, tag_hr_images, write_tag_cache
from .teacher import TeacherLoss, TeacherLosses, TeacherObjective, train_teacher
from .trainable import DEFAULT_TRAINABLE, freeze_all_but, trainable_parameters
from .vae import VAETrainingConfig, train_vae

__all__ = [
    "ConfigError",
    "DEFAULT_TRAINABLE",
    "DataConfig",
    "DecoderTrainingConfig",
    "DiscriminatorLosses",
    "DistillationConfig",
    "DistillationModelConfig",
    "DistillationObjective",
    "ExponentialMovingAverage",
    "FrozenComponents",
    "GeneratorLosses",
    "HRSource",
    "HRCropDataset",
    "Objective",
    "OptimizationConfig",
    "OutputConfig",
    "ProjectedDiscriminator",
    "ProjectedDiscriminatorConfig",
    "ShardedSampler",
    "TAADDConfig",
    "TAADDLoss",
    "TAADDStep",
    "TagCacheConfig",
    "TaggerConfig",
    "TeacherLoss",
    "TeacherLosses",
    "TeacherModelConfig",
    "TeacherObjective",
    "TeacherTrainingConfig",
    "TimestepAdaptiveWeight",
    "TrainingBatch",
    "TrainingBatchMaker",
    "TrainingRun",
    "TrainingState",
    "VAETrainingConfig",
    "create_backbone",
    "diff_augment",
    "discriminator_hinge_loss",
    "freeze_all_but",
    "generator_adversarial_loss",
    "list_checkpoints",
    "load_cached_tags",
    "load_backbone_weights",
    "load_config",
    "load_data_config",
    "resolve_resume",
    "select_trainable",
    "tag_hr_images",
    "train_decoder",
    "train_distill",
    "train_teacher",
    "train_vae",
    "trainable_parameters",
    "write_tag_cache",
]
