"""Teacher training, the SeeSR recipe: epsilon-prediction MSE of the ControlNet-guided U-Net on LR-conditioned samples.

Per sample (as the released ``train_seesr.py`` does): the HR latent, sampled from the VAE posterior, is noised at
``t`` uniform in ``[0, 1000)`` (no noise offset); the ControlNet's condition is the LR image resized to the HR size
in ``[0, 1]``; the image cross-attention reads the tagger embeddings of that LR image (bicubic resize to the
tagger's size); the text is the prompt of the batch. The loss is the mean squared error between the predicted and
the true noise, in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate.utils import set_seed
from diffusers.utils.torch_utils import randn_tensor

from ..diffusion import NoiseSchedule
from ..tagging import Tagger
from .components import (
    WHOLE_MODELS,
    load_teacher_training_models,
    prepare_students,
    prompt_batches,
    select_trainable,
)
from .config import TeacherTrainingConfig
from .data import TrainingBatch
from ..denoiser import check_pair, encode_images, predict_noise, tagger_embeddings
from ..draws import randint
from .runner import TrainingRun, TrainingTask


@dataclass
class TeacherLosses:
    loss: torch.Tensor
    timesteps: torch.Tensor

    def logs(self) -> dict[str, float]:
        return {"loss": self.loss.item(), "timestep_mean": self.timesteps.float().mean().item()}


class TeacherLoss:
    """The SeeSR training loss of a U-Net + ControlNet (references only; the VAE and the tagger are frozen here)."""

    def __init__(
        self,
        *,
        unet: nn.Module,
        controlnet: nn.Module,
        vae: nn.Module,
        schedule: NoiseSchedule,
        tagger: Tagger | None = None,
    ):
        self.unet, self.controlnet, self.schedule, self.tagger = unet, controlnet, schedule, tagger
        self.vae = vae.requires_grad_(False)
        if isinstance(tagger, nn.Module):
            tagger.requires_grad_(False)

    def __call__(
        self,
        hr: torch.Tensor,
        lr: torch.Tensor,
        text_embeddings: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> TeacherLosses:
        """``hr`` and ``lr`` ``[B, 3, H, W]`` in ``[0, 1]``, the LR already at the HR size."""
        check_pair(hr, lr)
        with torch.no_grad():
            latents = encode_images(self.vae, hr, generator)
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timesteps = randint(0, self.schedule.num_train_timesteps, (hr.shape[0],), generator, latents.device)
        noisy = self.schedule.add_noise(latents, noise, timesteps)
        predicted = predict_noise(
            self.unet, self.controlnet, noisy, timesteps, text_embeddings, lr, tagger_embeddings(self.tagger, lr)
        )
        return TeacherLosses(F.mse_loss(predicted.float(), noise.float()), timesteps)


class TeacherObjective:
    """What the training loop runs per micro-batch of teacher training: the loss and its backward pass."""

    auxiliary = None
    auxiliary_name = "auxiliary"

    def __init__(self, loss: TeacherLoss):
        self.loss = loss

    def accumulate(
        self,
        batch: TrainingBatch,
        generator: torch.Generator | None,
        backward: Callable[[torch.Tensor], None],
        step_auxiliary: Callable[[], None] | None = None,
    ) -> dict[str, float]:
        losses = self.loss(batch.hr, batch.lr, batch.text_embeddings, generator)
        backward(losses.loss)
        return losses.logs()


def train_teacher(config: TeacherTrainingConfig) -> Path | None:
    """Train a SeeSR-style teacher as ``config`` says; return the last checkpoint folder.

    Run plainly (one process) or under ``accelerate launch`` (one process per GPU, any number of nodes).
    """
    set_seed(config.optimization.seed)  # new image attentions, a U-Net from scratch: the same in every process
    unet, controlnet, frozen_components = load_teacher_training_models(config.model)
    patterns = WHOLE_MODELS if config.train_all else config.trainable
    trainable = select_trainable(unet, controlnet, patterns)

    prepare_students([unet, controlnet], frozen_components, config.optimization)

    def make_objective(models, device, dtype) -> TeacherObjective:
        return TeacherObjective(TeacherLoss(
            unet=models["unet"], controlnet=models["controlnet"], vae=frozen_components.vae,
            schedule=frozen_components.schedule, tagger=frozen_components.tagger,
        ))

    task = TrainingTask(
        models={"unet": unet, "controlnet": controlnet}, trainable=trainable, make_objective=make_objective,
        make_batches=prompt_batches(config.data, frozen_components), frozen=frozen_components,
    )
    return TrainingRun(config, task).train()
