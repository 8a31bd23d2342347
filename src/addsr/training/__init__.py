"""TA-ADD training of the AddSR student: losses, the projected discriminator, trainable-parameter selection."""

from .diffaug import diff_augment
from .discriminator import (
    ProjectedDiscriminator,
    ProjectedDiscriminatorConfig,
    create_backbone,
    load_backbone_weights,
)
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
from .trainable import DEFAULT_TRAINABLE, freeze_all_but, trainable_parameters

__all__ = [
    "DEFAULT_TRAINABLE",
    "DiscriminatorLosses",
    "GeneratorLosses",
    "ProjectedDiscriminator",
    "ProjectedDiscriminatorConfig",
    "TAADDConfig",
    "TAADDLoss",
    "TAADDStep",
    "TimestepAdaptiveWeight",
    "create_backbone",
    "diff_augment",
    "discriminator_hinge_loss",
    "freeze_all_but",
    "generator_adversarial_loss",
    "load_backbone_weights",
    "trainable_parameters",
]
