"""TA-ADD: AddSR's timestep-adaptive adversarial diffusion distillation (paper Sec. 3; released `train_addsr.py`).

One training iteration, in the released order (the discriminator is updated before the generator loss)::

    step = ta_add.student_step(hr, lr, text_embeddings, generator)    # the student's x0 estimate
    d_losses = ta_add.discriminator_loss(step, generator)              # hinge loss
    discriminator_optimizer.zero_grad(); d_losses.loss.backward(); discriminator_optimizer.step()
    g_losses = ta_add.generator_loss(step, generator)                  # L_dis + lambda * L_adv
    optimizer.zero_grad(); g_losses.total.backward(); optimizer.step()

Images are ``[B, 3, H, W]`` in ``[0, 1]``; ``lr`` is the LR image already resized to the HR size (the ControlNet
condition). The student path, per sample: with ``two_step_probability`` a no-grad first step at
``t1 in {999, 749, 499}`` conditioned on the LR gives the estimate x0-hat, then the graded step at the next student
timestep ``s`` is conditioned on x0-hat (PSR) and on the tagger embeddings of x0-hat; otherwise one graded step at
``s = 999`` conditioned on the LR. Both steps noise the HR latent with the same noise.
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from ..diffusion import STUDENT_TIMESTEPS, NoiseSchedule
from ..tagging import Tagger
from ..denoiser import check_pair, decode_latents, encode_images, predict_noise, tagger_embeddings
from .discriminator import ProjectedDiscriminator
from .offload import on_device
from ..draws import randint, uniform


@dataclass
class TimestepAdaptiveWeight:
    """d(s, t), the weight of the distillation loss of a sample with student step s and teacher timestep t.

    ``exponential``: ``sqrt(abar_t) * mu * nu**(p-1)`` (paper default: mu 0.5, nu 2.1; mu 0.7 for the fidelity
    model). ``linear``: ``sqrt(abar_t) * (gamma * p + kappa)`` (the released code's commented-out alternative:
    gamma 0.2, kappa 0.5). ``constant``: ``sqrt(abar_t) * constant``, the same for every student step (with 1.0,
    the released per-t factor ``get_weights`` alone). p is the inference-step index of the student step,
    p(999)=1, p(749)=2, p(499)=3, p(249)=4, taken from the graded step (``p_convention="paper"``) or as the released
    code does (``"released"``: the first step's index on the two-step path, 4 on the one-step path).
    """

    form: Literal["exponential", "linear", "constant"] = "exponential"
    mu: float = 0.5
    nu: float = 2.1
    gamma: float = 0.2
    kappa: float = 0.5
    constant: float = 1.0
    p_convention: Literal["paper", "released"] = "paper"

    def __post_init__(self) -> None:
        if self.form not in ("exponential", "linear", "constant"):
            raise ValueError(f"form must be 'exponential', 'linear' or 'constant', got {self.form!r}")
        if self.p_convention not in ("paper", "released"):
            raise ValueError(f"p_convention must be 'paper' or 'released', got {self.p_convention!r}")

    @staticmethod
    def step_index(timesteps: torch.Tensor | int) -> torch.Tensor:
        """p(s): the 1-based position of each student timestep in (999, 749, 499, 249)."""
        timesteps = torch.as_tensor(timesteps)
        student = torch.tensor(STUDENT_TIMESTEPS, device=timesteps.device)
        matches = timesteps.reshape(-1, 1) == student
        if not matches.any(dim=1).all():
            raise ValueError(f"Student timesteps must be in {STUDENT_TIMESTEPS}, got {timesteps.unique().tolist()}")
        return (matches.long().argmax(dim=1) + 1).reshape(timesteps.shape)

    def step_indices(self, timesteps: torch.Tensor, two_step: torch.Tensor) -> torch.Tensor:
        """p of each sample under ``p_convention``, from its graded timestep s and whether it took two steps."""
        graded = self.step_index(timesteps)
        if self.p_convention == "paper":
            return graded
        return torch.where(two_step, graded - 1, torch.full_like(graded, len(STUDENT_TIMESTEPS)))

    def __call__(self, step_index: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
        """d for step indices p ``[B]`` and teacher timesteps t ``[B]`` or ``[B, K]``; shaped like ``timesteps``."""
        sqrt_alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps.long()].sqrt()
        p = step_index.to(sqrt_alpha_bar).reshape(-1, *([1] * (timesteps.ndim - 1)))
        if self.form == "exponential":
            factor = self.mu * self.nu ** (p - 1)
        elif self.form == "linear":
            factor = self.gamma * p + self.kappa
        else:
            factor = torch.full_like(p, self.constant)
        return sqrt_alpha_bar * factor


@dataclass
class TAADDConfig:
    """TA-ADD hyper-parameters; defaults follow the released training except where noted."""

    weight: TimestepAdaptiveWeight = field(default_factory=TimestepAdaptiveWeight)
    adversarial_weight: float = 0.02
    """lambda in ``L = L_dis + lambda * L_adv``."""
    two_step_probability: float = 0.5
    """Probability, per sample, of the two-step (PSR) path (released: 0.5, drawn once per batch)."""
    teacher_samples: int = 4
    """Teacher timesteps drawn per sample; the distillation loss averages over them (released: 4)."""
    psr_weight: float = 1.0
    """PSR condition of the graded step: ``w * x0_hat + (1 - w) * lr`` (released training: 1, pure x0-hat;
    released inference: 0.4)."""
    psr_signed_range: bool = False
    """Feed x0-hat in ``[-1, 1]`` to the ControlNet and the tagger, as the released training does (inference feeds
    ``[0, 1]``); needs ``psr_weight = 1``."""
    teacher_reuses_student_noise: bool = False
    """Noise the student's estimate for the teacher with the student's own noise (released) instead of fresh noise."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.two_step_probability <= 1.0:
            raise ValueError(f"two_step_probability must be in [0, 1], got {self.two_step_probability}")
        if not 0.0 <= self.psr_weight <= 1.0:
            raise ValueError(f"psr_weight must be in [0, 1], got {self.psr_weight}")
        if self.psr_signed_range and self.psr_weight != 1.0:
            raise ValueError("psr_signed_range reproduces the released training, which uses psr_weight = 1")
        if self.teacher_samples < 1:
            raise ValueError(f"teacher_samples must be at least 1, got {self.teacher_samples}")


@dataclass
class TAADDStep:
    """A batch and the student's estimate for it, shared by the discriminator and generator losses."""

    hr: torch.Tensor
    lr: torch.Tensor
    text_embeddings: torch.Tensor
    latents: torch.Tensor
    """Student z0-hat ``[B, 4, h, w]`` (with gradient)."""
    images: torch.Tensor
    """Decoded student x0-hat in ``[0, 1]`` (with gradient through the VAE decoder)."""
    noise: torch.Tensor
    timesteps: torch.Tensor
    """Graded student timestep s of each sample."""
    two_step: torch.Tensor
    """Whether each sample took the two-step (PSR) path."""
    step_indices: torch.Tensor
    """p of each sample for d(s, t), under the configured convention."""
    discriminator_condition: torch.Tensor
    """Condition vectors of the LR images for the discriminator."""


@dataclass
class DiscriminatorLosses:
    loss: torch.Tensor
    real_logits: torch.Tensor
    fake_logits: torch.Tensor

    def logs(self) -> dict[str, float]:
        return {
            "discriminator_loss": self.loss.item(),
            "logits_real": self.real_logits.mean().item(),
            "logits_fake": self.fake_logits.mean().item(),
        }


@dataclass
class GeneratorLosses:
    total: torch.Tensor
    """``distillation + adversarial_weight * adversarial``: backpropagate this into the student."""
    distillation: torch.Tensor
    adversarial: torch.Tensor
    weights: torch.Tensor
    """d(s, t) ``[B, K]`` of each sample and teacher timestep."""
    teacher_timesteps: torch.Tensor
    """Teacher timesteps t ``[B, K]``."""
    student_timesteps: torch.Tensor
    two_step: torch.Tensor

    def logs(self) -> dict[str, float]:
        """Scalars for logging: loss terms, d(s, t) statistics, student timestep counts, two-step fraction."""
        counts = Counter(self.student_timesteps.tolist())
        return {
            "loss": self.total.item(),
            "distillation_loss": self.distillation.item(),
            "adversarial_loss": self.adversarial.item(),
            "d_mean": self.weights.mean().item(),
            "d_min": self.weights.min().item(),
            "d_max": self.weights.max().item(),
            "two_step_fraction": self.two_step.float().mean().item(),
            **{f"s_{timestep}": float(counts[timestep]) for timestep in STUDENT_TIMESTEPS},
        }


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """``-mean(D(fake))``."""
    return -fake_logits.mean()


class TAADDLoss:
    """The TA-ADD losses for a student (U-Net + ControlNet), a frozen teacher of the same kind, the VAE, an optional
    tagger (image embeddings for the image cross-attention) and the projected discriminator.

    Holds references only (no parameters of its own). The teacher, the VAE and the tagger are frozen here. The
    generator loss also back-propagates into the discriminator's heads: zero the discriminator's gradients before
    its own backward.
    """

    def __init__(
        self,
        *,
        student_unet: nn.Module,
        student_controlnet: nn.Module,
        teacher_unet: nn.Module,
        teacher_controlnet: nn.Module,
        vae: nn.Module,
        discriminator: ProjectedDiscriminator,
        schedule: NoiseSchedule,
        tagger: Tagger | None = None,
        config: TAADDConfig | None = None,
        teacher_device: torch.device | None = None,
    ):
        self.student_unet = student_unet
        self.student_controlnet = student_controlnet
        self.teacher_unet = teacher_unet.requires_grad_(False)
        self.teacher_controlnet = teacher_controlnet.requires_grad_(False)
        self.vae = vae.requires_grad_(False)
        self.discriminator = discriminator
        self.schedule = schedule
        self.tagger = tagger
        if isinstance(tagger, nn.Module):
            tagger.requires_grad_(False)
        self.config = config or TAADDConfig()
        self.teacher_device = teacher_device

    # -- building blocks ------------------------------------------------------------------------------

    def _student_x0(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeddings: torch.Tensor,
        condition: torch.Tensor,
        image_embeddings: torch.Tensor | None,
    ) -> torch.Tensor:
        """z0 of the student's one step from ``latents`` noised at ``timesteps`` (paper Eq. 2)."""
        noisy = self.schedule.add_noise(latents, noise, timesteps)
        eps = predict_noise(
            self.student_unet, self.student_controlnet, noisy, timesteps, text_embeddings, condition, image_embeddings
        )
        return self.schedule.predict_x0(noisy, eps, timesteps)

    def _psr_condition(self, estimate: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        if self.config.psr_signed_range:
            return estimate * 2 - 1
        return self.config.psr_weight * estimate + (1 - self.config.psr_weight) * lr

    # -- the losses -----------------------------------------------------------------------------------

    def student_step(
        self,
        hr: torch.Tensor,
        lr: torch.Tensor,
        text_embeddings: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> TAADDStep:
        """Choose each sample's path and student timestep s, and predict its z0 and x0 with gradient."""
        check_pair(hr, lr)
        batch, device = hr.shape[0], hr.device
        latents = encode_images(self.vae, hr, generator)
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        two_step = uniform(0.0, 1.0, batch, generator, device) < self.config.two_step_probability
        first_index = randint(0, len(STUDENT_TIMESTEPS) - 1, (batch,), generator, device)
        student = torch.tensor(STUDENT_TIMESTEPS, device=device)
        timesteps = torch.where(two_step, student[first_index + 1], student[0])

        condition = lr
        image_embeddings = tagger_embeddings(self.tagger, lr)
        if two_step.any():
            rows = two_step.nonzero().squeeze(1)
            with torch.no_grad():
                first = student[first_index[rows]]
                first_x0 = self._student_x0(
                    latents[rows], noise[rows], first, text_embeddings[rows], lr[rows],
                    None if image_embeddings is None else image_embeddings[rows],
                )
                psr = self._psr_condition(decode_latents(self.vae, first_x0), lr[rows])
                condition = lr.index_copy(0, rows, psr.to(lr.dtype))
                if image_embeddings is not None:
                    low = -1.0 if self.config.psr_signed_range else 0.0
                    psr_embeddings = tagger_embeddings(self.tagger, psr, low=low)
                    image_embeddings = image_embeddings.index_copy(0, rows, psr_embeddings.to(image_embeddings.dtype))

        z0 = self._student_x0(latents, noise, timesteps, text_embeddings, condition, image_embeddings)
        return TAADDStep(
            hr=hr, lr=lr, text_embeddings=text_embeddings, latents=z0, images=decode_latents(self.vae, z0),
            noise=noise, timesteps=timesteps, two_step=two_step,
            step_indices=self.config.weight.step_indices(timesteps, two_step),
            discriminator_condition=self.discriminator.embed_condition(lr),
        )

    def discriminator_loss(self, step: TAADDStep, generator: torch.Generator | None = None) -> DiscriminatorLosses:
        """Hinge loss of the discriminator: real = HR, fake = the student's x0 (detached). Real and fake go through
        one forward call (the discriminator has no batch statistics; one call per backward suits DDP)."""
        images = torch.cat([step.hr.to(step.images.dtype), step.images.detach()])
        condition = step.discriminator_condition.repeat(2, 1)
        real, fake = self.discriminator(images, condition, generator).chunk(2)
        return DiscriminatorLosses(discriminator_hinge_loss(real, fake), real.detach(), fake.detach())

    @torch.no_grad()
    def teacher_images(
        self, step: TAADDStep, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher x0 ``[B, K, 3, H, W]`` in ``[0, 1]`` and its timesteps ``[B, K]``: the student's z0 noised at
        t ~ U[0, T), denoised in one step by the teacher conditioned on the HR image."""
        batch, samples = step.hr.shape[0], self.config.teacher_samples
        device = step.latents.device
        timesteps = randint(0, self.schedule.num_train_timesteps, (batch, samples), generator, device)
        hr_embeddings = tagger_embeddings(self.tagger, step.hr)
        student_z0 = step.latents.detach()
        images = []
        with self._teacher_loaded():
            for k in range(samples):
                images.append(self._teacher_x0(step, student_z0, timesteps[:, k], hr_embeddings, generator))
        return torch.stack(images, dim=1), timesteps

    def _teacher_loaded(self):
        """The teacher on ``teacher_device`` for the block when it is kept on the CPU, else as it is."""
        if self.teacher_device is None:
            return nullcontext()
        return on_device([self.teacher_unet, self.teacher_controlnet], self.teacher_device)

    def _teacher_x0(
        self,
        step: TAADDStep,
        student_z0: torch.Tensor,
        timesteps: torch.Tensor,
        hr_embeddings: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The teacher's one-step x0 of the student's z0 noised at ``timesteps``, conditioned on the HR."""
        if self.config.teacher_reuses_student_noise:
            noise = step.noise
        else:
            noise = randn_tensor(student_z0.shape, generator=generator, device=student_z0.device,
                                 dtype=student_z0.dtype)
        noisy = self.schedule.add_noise(student_z0, noise, timesteps)
        eps = predict_noise(
            self.teacher_unet, self.teacher_controlnet, noisy, timesteps, step.text_embeddings, step.hr, hr_embeddings
        )
        return decode_latents(self.vae, self.schedule.predict_x0(noisy, eps, timesteps))

    def generator_loss(self, step: TAADDStep, generator: torch.Generator | None = None) -> GeneratorLosses:
        """``L_dis + lambda * L_adv``: d(s, t)-weighted pixel MSE to the teacher's x0, plus ``-D(fake)``."""
        teacher, teacher_timesteps = self.teacher_images(step, generator)
        weights = self.config.weight(step.step_indices, teacher_timesteps, self.schedule.alphas_cumprod)
        squared_error = (teacher - step.images.unsqueeze(1)).pow(2).mean(dim=(2, 3, 4))
        distillation = (weights * squared_error).mean()
        fake = self.discriminator(step.images, step.discriminator_condition, generator)
        adversarial = generator_adversarial_loss(fake)
        return GeneratorLosses(
            total=distillation + self.config.adversarial_weight * adversarial,
            distillation=distillation,
            adversarial=adversarial,
            weights=weights.detach(),
            teacher_timesteps=teacher_timesteps,
            student_timesteps=step.timesteps,
            two_step=step.two_step,
        )
