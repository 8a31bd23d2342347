import math

import pytest
import torch
from diffusers import DDPMScheduler

from addsr.diffusion import SD2_SCHEDULER_CONFIG, STUDENT_TIMESTEPS, NoiseSchedule, student_timesteps


def test_alphas_cumprod_follow_the_scaled_linear_formula():
    schedule = NoiseSchedule.from_config(SD2_SCHEDULER_CONFIG)
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1 - betas, dim=0)
    torch.testing.assert_close(schedule.alphas_cumprod.double(), expected, rtol=1e-6, atol=1e-7)


def test_add_noise_matches_diffusers_and_predict_x0_inverts_it():
    schedule = NoiseSchedule.from_config()
    scheduler = DDPMScheduler.from_config(SD2_SCHEDULER_CONFIG)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    timesteps = torch.tensor([999, 499, 10])
    noisy = schedule.add_noise(x0, noise, timesteps)
    torch.testing.assert_close(noisy, scheduler.add_noise(x0, noise, timesteps))
    torch.testing.assert_close(schedule.predict_x0(noisy, noise, timesteps), x0, rtol=1e-4, atol=1e-4)


def test_predict_x0_is_eq2_for_an_integer_timestep():
    schedule = NoiseSchedule.from_config()
    x_t, eps = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    abar = schedule.alphas_cumprod[749]
    expected = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
    torch.testing.assert_close(schedule.predict_x0(x_t, eps, 749), expected)


def test_student_timesteps():
    assert STUDENT_TIMESTEPS == (999, 749, 499, 249)
    assert [student_timesteps(n) for n in (1, 4)] == [[999], [999, 749, 499, 249]]
    with pytest.raises(ValueError, match="between 1 and 4"):
        student_timesteps(5)


def test_non_epsilon_schedule_is_refused():
    with pytest.raises(ValueError, match="epsilon"):
        NoiseSchedule.from_config({**SD2_SCHEDULER_CONFIG, "prediction_type": "v_prediction"})
