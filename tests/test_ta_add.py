import copy
import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from addsr.diffusion import STUDENT_TIMESTEPS, NoiseSchedule
from addsr.denoiser import tagger_embeddings
from addsr.training import (
    DEFAULT_TRAINABLE,
    ProjectedDiscriminator,
    ProjectedDiscriminatorConfig,
    TAADDConfig,
    TAADDLoss,
    TimestepAdaptiveWeight,
    discriminator_hinge_loss,
    freeze_all_but,
    generator_adversarial_loss,
    trainable_parameters,
)

from conftest import TEXT_DIM, TinyTagger, tiny_controlnet, tiny_unet, tiny_vae

SCHEDULE = NoiseSchedule.from_config()

SIZE = 32  # HR images 32x32 -> latents 4x4


def tiny_discriminator() -> ProjectedDiscriminator:
    torch.manual_seed(5)
    features = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=0)
    condition = VisionTransformer(img_size=28, patch_size=14, embed_dim=24, depth=2, num_heads=2, num_classes=0)
    return ProjectedDiscriminator(features, condition, ProjectedDiscriminatorConfig(feature_blocks=(1, 3)))


def build(tagger: bool = True, **config) -> TAADDLoss:
    """Tiny student, a frozen copy as teacher (as in real training), tiny VAE, tagger and discriminator."""
    config.setdefault("teacher_samples", 2)
    unet = tiny_unet(image_attention=tagger)
    controlnet = tiny_controlnet(unet)
    teacher_unet, teacher_controlnet = copy.deepcopy(unet), copy.deepcopy(controlnet)
    if tagger:
        freeze_all_but(unet, controlnet)
    return TAADDLoss(
        student_unet=unet, student_controlnet=controlnet, teacher_unet=teacher_unet,
        teacher_controlnet=teacher_controlnet, vae=tiny_vae(), discriminator=tiny_discriminator(),
        schedule=SCHEDULE, tagger=TinyTagger() if tagger else None, config=TAADDConfig(**config),
    )


def batch(size: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hr = torch.rand(size, 3, SIZE, SIZE, generator=generator)
    lr = F.interpolate(F.avg_pool2d(hr, 4), size=(SIZE, SIZE), mode="bilinear")
    return hr, lr, torch.randn(size, 5, TEXT_DIM, generator=generator)


def iteration(ta_add: TAADDLoss, data, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    step = ta_add.student_step(*data, generator)
    return step, ta_add.discriminator_loss(step, generator), ta_add.generator_loss(step, generator)


def record_calls(module, store):
    return module.register_forward_pre_hook(lambda m, args, kwargs: store.append((args, kwargs)), with_kwargs=True)


# -- d(s, t) ----------------------------------------------------------------------------------------------

TEACHER_TIMESTEPS = (0, 1, 250, 500, 998, 999)


def expected_p(s: int, two_step: bool, convention: str) -> int:
    position = STUDENT_TIMESTEPS.index(s) + 1
    if convention == "paper":
        return position
    return position - 1 if two_step else 4


def test_step_index_of_student_timesteps():
    assert TimestepAdaptiveWeight.step_index(torch.tensor([999, 749, 499, 249])).tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="500"):
        TimestepAdaptiveWeight.step_index(torch.tensor([999, 500]))


@pytest.mark.parametrize("convention", ["paper", "released"])
@pytest.mark.parametrize("mu", [0.5, 0.7])
def test_exponential_weight_matches_formula(convention, mu):
    weight = TimestepAdaptiveWeight(mu=mu, p_convention=convention)
    # Every student timestep s, on the path it can come from: 999 one step, the others two steps.
    timesteps = torch.tensor(STUDENT_TIMESTEPS)
    two_step = timesteps != 999
    p = weight.step_indices(timesteps, two_step)
    for t in TEACHER_TIMESTEPS:
        values = weight(p, torch.full((4,), t), SCHEDULE.alphas_cumprod)
        for s, two, value in zip(STUDENT_TIMESTEPS, two_step.tolist(), values.tolist()):
            alpha_bar = SCHEDULE.alphas_cumprod[t].item()
            expected = math.sqrt(alpha_bar) * mu * 2.1 ** (expected_p(s, two, convention) - 1)
            assert value == pytest.approx(expected, rel=1e-5), (s, t)


@pytest.mark.parametrize("convention", ["paper", "released"])
def test_linear_and_constant_weights_match_formula(convention):
    linear = TimestepAdaptiveWeight(form="linear", gamma=0.3, kappa=0.4, p_convention=convention)
    constant = TimestepAdaptiveWeight(form="constant", constant=1.5, p_convention=convention)
    timesteps = torch.tensor(STUDENT_TIMESTEPS)
    two_step = timesteps != 999
    for t in TEACHER_TIMESTEPS:
        sqrt_alpha_bar = math.sqrt(SCHEDULE.alphas_cumprod[t].item())
        teacher = torch.full((4,), t)
        linear_values = linear(linear.step_indices(timesteps, two_step), teacher, SCHEDULE.alphas_cumprod)
        constant_values = constant(constant.step_indices(timesteps, two_step), teacher, SCHEDULE.alphas_cumprod)
        for i, s in enumerate(STUDENT_TIMESTEPS):
            p = expected_p(s, bool(two_step[i]), convention)
            assert linear_values[i].item() == pytest.approx(sqrt_alpha_bar * (0.3 * p + 0.4), rel=1e-5)
            assert constant_values[i].item() == pytest.approx(sqrt_alpha_bar * 1.5, rel=1e-5)


def test_weight_broadcasts_over_teacher_samples():
    weight = TimestepAdaptiveWeight()
    p = torch.tensor([1, 4])
    teacher = torch.tensor([[10, 900, 0], [500, 20, 999]])
    values = weight(p, teacher, SCHEDULE.alphas_cumprod)
    assert values.shape == (2, 3)
    assert values[1, 2].item() == pytest.approx(
        math.sqrt(SCHEDULE.alphas_cumprod[999].item()) * 0.5 * 2.1**3, rel=1e-5)


# -- hinge losses -------------------------------------------------------------------------------------------


def test_discriminator_hinge_loss_signs():
    assert discriminator_hinge_loss(torch.tensor([1.0, 2.5]), torch.tensor([-1.0, -3.0])).item() == 0.0
    assert discriminator_hinge_loss(torch.tensor([0.5, 2.0]), torch.tensor([-2.0, -1.0])).item() > 0
    assert discriminator_hinge_loss(torch.tensor([1.0, 2.0]), torch.tensor([-2.0, -0.5])).item() > 0
    assert discriminator_hinge_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(2.0)


def test_generator_loss_falls_as_discriminator_rates_fakes_higher():
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([0.5, 2.0])
    assert generator_adversarial_loss(high) < generator_adversarial_loss(low)
    fake = torch.zeros(3, requires_grad=True)
    generator_adversarial_loss(fake).backward()
    assert (fake.grad < 0).all()


# -- the TA-ADD losses ---------------------------------------------------------------------------------------


def test_only_trainable_student_parameters_get_gradients():
    ta_add = build()
    _, _, losses = iteration(ta_add, batch())
    losses.total.backward()
    trained = trainable_parameters(ta_add.student_unet, ta_add.student_controlnet)
    for prefix, model in (("unet", ta_add.student_unet), ("controlnet", ta_add.student_controlnet)):
        for name, parameter in model.named_parameters():
            if f"{prefix}.{name}" in trained:
                assert parameter.grad is not None, name
            else:
                assert parameter.grad is None, name
    assert any(p.grad.abs().sum() > 0 for p in trained.values())
    frozen = [ta_add.teacher_unet, ta_add.teacher_controlnet, ta_add.vae, ta_add.tagger,
              ta_add.discriminator.features, ta_add.discriminator.condition_network]
    assert all(p.grad is None for module in frozen for p in module.parameters())


def test_optimisation_lowers_distillation_loss():
    ta_add = build()
    params = list(trainable_parameters(ta_add.student_unet, ta_add.student_controlnet).values())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    data = batch(2, seed=1)
    losses = []
    for _ in range(4):
        _, _, generator_losses = iteration(ta_add, data, seed=5)  # same draws every step: a fixed objective
        optimizer.zero_grad()
        generator_losses.total.backward()
        optimizer.step()
        losses.append(generator_losses.distillation.item())
    assert losses[-1] < 0.95 * losses[0]


@pytest.mark.parametrize("size", [1, 3])
@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_paths_and_batch_sizes(size, probability):
    ta_add = build(two_step_probability=probability)
    step, discriminator_losses, losses = iteration(ta_add, batch(size))
    assert step.images.shape == (size, 3, SIZE, SIZE) and step.latents.shape == (size, 4, 4, 4)
    if probability == 0.0:
        assert step.timesteps.tolist() == [999] * size and not step.two_step.any()
    else:
        assert set(step.timesteps.tolist()) <= {749, 499, 249} and step.two_step.all()
    assert losses.weights.shape == losses.teacher_timesteps.shape == (size, 2)
    assert discriminator_losses.real_logits.shape == discriminator_losses.fake_logits.shape == (size, 3 * 16)
    torch.testing.assert_close(discriminator_losses.loss, discriminator_hinge_loss(
        discriminator_losses.real_logits, discriminator_losses.fake_logits))
    assert ((losses.teacher_timesteps >= 0) & (losses.teacher_timesteps < 1000)).all()
    logs = {**losses.logs(), **discriminator_losses.logs()}
    assert sum(logs[f"s_{s}"] for s in STUDENT_TIMESTEPS) == size
    assert logs["distillation_loss"] >= 0 and logs["discriminator_loss"] >= 0  # a weighted MSE, a hinge loss
    assert 0 < logs["d_min"] <= logs["d_mean"] <= logs["d_max"]
    assert logs["two_step_fraction"] == probability
    assert losses.total.item() == pytest.approx(losses.distillation.item() + 0.02 * losses.adversarial.item(), rel=1e-5)


def test_mixed_batch_conditions_each_sample_on_its_own_path():
    ta_add = build(two_step_probability=0.5)
    calls = []
    record_calls(ta_add.student_controlnet, calls)
    hr, lr, text = batch(6, seed=2)
    step = ta_add.student_step(hr, lr, text, torch.Generator().manual_seed(1))
    two_step = step.two_step
    assert 0 < two_step.sum() < 6, "seed must give a mixed batch"
    first_args, first_kwargs = calls[0]
    assert first_args[0].shape[0] == two_step.sum()  # the no-grad first step runs on the two-step samples only
    assert torch.equal(first_kwargs["controlnet_cond"], lr[two_step])
    graded_condition = calls[1][1]["controlnet_cond"]
    assert torch.equal(graded_condition[~two_step], lr[~two_step])
    assert not torch.allclose(graded_condition[two_step], lr[two_step])
    assert calls[1][0][1].tolist() == step.timesteps.tolist()


def test_psr_condition_options():
    data = batch(2, seed=4)

    def graded_condition(**config):
        ta_add = build(two_step_probability=1.0, **config)
        calls = []
        record_calls(ta_add.student_controlnet, calls)
        ta_add.student_step(*data, torch.Generator().manual_seed(0))
        return calls[1][1]["controlnet_cond"]

    estimate = graded_condition(psr_weight=1.0)
    lr = data[1]
    torch.testing.assert_close(graded_condition(psr_weight=0.0), lr)
    torch.testing.assert_close(graded_condition(psr_weight=0.4), 0.4 * estimate + 0.6 * lr)
    torch.testing.assert_close(graded_condition(psr_signed_range=True), estimate * 2 - 1)
    assert estimate.min() >= 0 and estimate.max() <= 1


def test_teacher_sees_hr_and_student_estimate():
    ta_add = build(teacher_samples=3)
    calls = []
    record_calls(ta_add.teacher_controlnet, calls)
    data = batch(2)
    hr = data[0]
    _, _, losses = iteration(ta_add, data)
    assert len(calls) == 3
    hr_embeddings = tagger_embeddings(ta_add.tagger, hr)
    for k, (args, kwargs) in enumerate(calls):
        assert torch.equal(kwargs["controlnet_cond"], hr)
        assert torch.equal(kwargs["image_encoder_hidden_states"], hr_embeddings)
        assert args[1].tolist() == losses.teacher_timesteps[:, k].tolist()


def test_distillation_is_the_weighted_pixel_mse_to_the_teacher():
    ta_add = build(teacher_samples=3)
    generator = torch.Generator().manual_seed(7)
    step = ta_add.student_step(*batch(2), generator)
    replay = torch.Generator().manual_seed(0)
    replay.set_state(generator.get_state())
    losses = ta_add.generator_loss(step, generator)
    teacher, timesteps = ta_add.teacher_images(step, replay)
    weights = TimestepAdaptiveWeight()(TimestepAdaptiveWeight.step_index(step.timesteps), timesteps,
                                       SCHEDULE.alphas_cumprod)
    mse = ((teacher - step.images[:, None]) ** 2).mean(dim=(2, 3, 4))
    torch.testing.assert_close(losses.distillation, (weights * mse).mean())
    torch.testing.assert_close(losses.weights, weights)


def test_released_convention_uses_first_step_index():
    ta_add = build(two_step_probability=0.5, weight=TimestepAdaptiveWeight(p_convention="released"))
    step = ta_add.student_step(*batch(6, seed=2), torch.Generator().manual_seed(1))
    for s, two, p in zip(step.timesteps.tolist(), step.two_step.tolist(), step.step_indices.tolist()):
        assert p == (STUDENT_TIMESTEPS.index(s) if two else 4)


def test_same_seed_same_losses():
    data = batch(2)
    first = [iteration(build(), data, seed=5) for _ in range(2)]
    other = iteration(build(), data, seed=6)
    (_, d1, g1), (_, d2, g2) = first
    assert g1.total.item() == g2.total.item() and d1.loss.item() == d2.loss.item()
    assert g1.total.item() != other[2].total.item()


def test_without_tagger_no_image_embeddings_are_passed():
    ta_add = build(tagger=False, two_step_probability=1.0)
    calls = []
    record_calls(ta_add.student_unet, calls)
    _, _, losses = iteration(ta_add, batch(2))
    assert calls and all("image_encoder_hidden_states" not in kwargs for _, kwargs in calls)
    assert losses.distillation.item() > 0  # the teacher, conditioned on the HR image, sees more than the student
    assert losses.total.item() == pytest.approx(losses.distillation.item() + 0.02 * losses.adversarial.item(),
                                                rel=1e-5)


# -- configuration -------------------------------------------------------------------------------------------


def test_trainable_parameters_selection_and_errors():
    unet = tiny_unet()
    controlnet = tiny_controlnet(unet)
    selected = trainable_parameters(unet, controlnet)
    assert selected and all(any(p.split(".", 1)[1] in name for p in DEFAULT_TRAINABLE) for name in selected)
    assert any(name.startswith("controlnet.controlnet_cond_embedding") for name in selected)
    with pytest.raises(ValueError, match="no_such_module"):
        trainable_parameters(unet, controlnet, ("unet.no_such_module",))
    with pytest.raises(ValueError, match="vae.decoder"):
        trainable_parameters(unet, controlnet, ("vae.decoder",))


def test_invalid_configurations_are_rejected():
    with pytest.raises(ValueError, match="psr_weight"):
        TAADDConfig(psr_weight=0.4, psr_signed_range=True)
    with pytest.raises(ValueError, match="form"):
        TimestepAdaptiveWeight(form="cosine")
    with pytest.raises(ValueError, match="teacher_samples"):
        TAADDConfig(teacher_samples=0)
