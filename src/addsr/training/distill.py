"""TA-ADD distillation (AddSR): the student learns from the frozen teacher and the projected discriminator.

Per micro-batch, in the released order: the student step (one or two student steps, PSR), the discriminator's
hinge loss and backward pass, the discriminator's optimiser step (on the last micro-step of an optimiser step),
then the generator loss ``L_dis + lambda * L_adv`` with the discriminator heads frozen (so the generator's
backward pass leaves no gradient on them), and its backward pass. See ``docs/ta-add.md`` for the losses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import set_seed

from .components import (
    DistillationModels,
    load_distillation_models,
    move_to,
    prepare_students,
    prompt_batches,
    select_trainable,
    set_attention,
)
from .config import DistillationConfig
from .data import TrainingBatch
from .discriminator import ProjectedDiscriminator
from .offload import CPU
from .runner import TrainingRun, TrainingTask, frozen
from .ta_add import TAADDLoss


class DistillationObjective:
    """What the training loop runs per micro-batch of TA-ADD; the discriminator heads are its auxiliary module."""

    auxiliary_name = "discriminator"

    def __init__(self, ta_add: TAADDLoss):
        self.ta_add = ta_add
        self.auxiliary = ta_add.discriminator.heads

    def accumulate(
        self,
        batch: TrainingBatch,
        generator: torch.Generator | None,
        backward: Callable[[torch.Tensor], None],
        step_auxiliary: Callable[[], None] | None = None,
    ) -> dict[str, float]:
        step = self.ta_add.student_step(batch.hr, batch.lr, batch.text_embeddings, generator)
        discriminator = self.ta_add.discriminator_loss(step, generator)
        backward(discriminator.loss)
        if step_auxiliary is not None:
            step_auxiliary()
        with frozen(self.auxiliary):
            generator_losses = self.ta_add.generator_loss(step, generator)
        backward(generator_losses.total)
        return {**generator_losses.logs(), **discriminator.logs()}


def prepare_discriminator(
    discriminator: ProjectedDiscriminator, device: torch.device, dtype: torch.dtype
) -> ProjectedDiscriminator:
    """Frozen backbones in ``dtype``, trainable heads in float32, all on ``device``."""
    discriminator.to(device)
    move_to(discriminator.features, device, dtype)
    move_to(discriminator.condition_network, device, dtype)
    return discriminator.train()


def train_distill(config: DistillationConfig) -> Path | None:
    """Distil a student from a teacher with TA-ADD as ``config`` says; return the last checkpoint folder.

    Run plainly (one process) or under ``accelerate launch`` (one process per GPU, any number of nodes).
    """
    set_seed(config.optimization.seed)  # the discriminator heads' initialisation, the same in every process
    return distillation_run(config, load_distillation_models(config.model)).train()


def distillation_run(config: DistillationConfig, models: DistillationModels) -> TrainingRun:
    """The training run of ``config`` over ``models`` (loaded from the config's folders, or built in memory)."""
    students = {"unet": models.student_unet, "controlnet": models.student_controlnet}
    trainable = select_trainable(models.student_unet, models.student_controlnet, config.trainable)
    discriminator = ProjectedDiscriminator.from_config(config.discriminator)
    frozen_components = models.frozen
    teachers = (models.teacher_unet, models.teacher_controlnet)
    set_attention(teachers, config.optimization.attention)
    prepare_students(list(students.values()), frozen_components, config.optimization)

    def make_objective(trained, device, dtype) -> DistillationObjective:
        offload = config.optimization.offload_frozen and device.type != "cpu"
        for teacher in teachers:
            move_to(teacher, CPU if offload else device, dtype).eval()
        return DistillationObjective(TAADDLoss(
            student_unet=trained["unet"], student_controlnet=trained["controlnet"], teacher_unet=models.teacher_unet,
            teacher_controlnet=models.teacher_controlnet, vae=frozen_components.vae,
            discriminator=prepare_discriminator(discriminator, device, dtype), schedule=frozen_components.schedule,
            tagger=frozen_components.tagger, config=config.ta_add, teacher_device=device if offload else None,
        ))

    task = TrainingTask(
        models=students, trainable=trainable, make_objective=make_objective,
        make_batches=prompt_batches(config.data, frozen_components), frozen=frozen_components,
        auxiliary_learning_rate=config.discriminator_learning_rate,
    )
    return TrainingRun(config, task)
