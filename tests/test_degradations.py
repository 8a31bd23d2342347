"""Tests of addsr.degradations: Real-ESRGAN second-order pipeline, the paper's test degradations, folder tool."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from addsr.degradations import (
    PAPER_DEGRADATIONS,
    BlurKernelConfig,
    DegradeFolderError,
    RealESRGANDegradation,
    RealESRGANDegradationConfig,
    degrade_folder,
    jpeg_compress,
    paper_degradation,
    pil_jpeg,
)
from addsr.degradations import ops
from addsr.degradations.kernels import (
    KERNEL_TYPES,
    gaussian_kernel_1d,
    gaussian_like_kernels,
    random_blur_kernels,
    random_final_sinc_kernels,
    sinc_kernels,
)


def natural_like(batch: int = 3, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random colour fields with some edges, rounded to 8 bits."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // 8, width // 8, generator=generator)
    images = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    images[..., : height // 2, : width // 3] += 0.3
    return ops.quantize_8bit(images)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (10 * torch.log10(1.0 / F.mse_loss(a, b))).item()


def high_frequency_energy(images: torch.Tensor) -> float:
    laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(images.flatten(0, 1).unsqueeze(1), laplacian).pow(2).mean().item()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------- config


def test_config_defaults_are_the_spec_values():
    config = RealESRGANDegradationConfig()
    first, second = config.first, config.second
    assert config.scale == 4
    for stage, sigma in ((first, (0.2, 3.0)), (second, (0.2, 1.5))):
        assert stage.kernel.kernel_sizes == (7, 9, 11, 13, 15, 17, 19, 21)
        assert stage.kernel.kernel_probs == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
        assert stage.kernel.sigma_range == sigma
        assert stage.kernel.betag_range == (0.5, 4.0)
        assert stage.kernel.betap_range == (1.0, 2.0)
        assert stage.kernel.sinc_prob == 0.1
        assert stage.gaussian_noise_prob == 0.5
        assert stage.gray_noise_prob == 0.4
        assert stage.jpeg_range == (30.0, 95.0)
    assert (first.blur_prob, second.blur_prob) == (1.0, 0.8)
    assert (first.resize_probs, second.resize_probs) == ((0.2, 0.7, 0.1), (0.3, 0.4, 0.3))
    assert (first.resize_range, second.resize_range) == ((0.15, 1.5), (0.3, 1.2))
    assert (first.noise_range, second.noise_range) == ((1.0, 30.0), (1.0, 25.0))
    assert (first.poisson_scale_range, second.poisson_scale_range) == ((0.05, 3.0), (0.05, 2.5))
    assert config.final_sinc_prob == 0.8
    assert (config.usm_weight, config.usm_radius, config.usm_threshold) == (0.5, 50, 10.0)
    assert config.kernel_pad_size == 21


@pytest.mark.parametrize(
    "make",
    [
        lambda: BlurKernelConfig(kernel_probs=(0.5, 0.5, 0.5, 0.0, 0.0, 0.0)),
        lambda: BlurKernelConfig(kernel_sizes=(7, 8)),
        lambda: BlurKernelConfig(sigma_range=(3.0, 0.2)),
        lambda: RealESRGANDegradationConfig(final_sinc_prob=1.5),
    ],
)
def test_config_rejects_bad_values(make):
    with pytest.raises(ValueError):
        make()


# ---------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("type_index", range(len(KERNEL_TYPES)))
def test_every_kernel_type_sums_to_one_inside_its_window(type_index):
    count = 6
    sizes = torch.tensor([7, 9, 13, 15, 19, 21])
    kernels = gaussian_like_kernels(
        torch.full((count,), type_index),
        sigma_x=torch.linspace(0.2, 3.0, count),
        sigma_y=torch.linspace(3.0, 0.5, count),
        rotation=torch.linspace(-3.0, 3.0, count),
        beta=torch.linspace(0.5, 4.0, count),
        sizes=sizes,
        pad_to=21,
    )
    assert kernels.shape == (count, 21, 21)
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(count), atol=1e-5)
    assert (kernels >= 0).all()
    for kernel, size in zip(kernels, sizes.tolist()):
        border = (21 - size) // 2
        assert kernel[border : 21 - border, border : 21 - border].sum() == pytest.approx(1.0, abs=1e-5)
        assert kernel[:border].abs().sum() == 0 and kernel[:, :border].abs().sum() == 0


def test_sinc_kernels_sum_to_one():
    kernels = sinc_kernels(torch.tensor([math.pi / 5, math.pi / 2, math.pi]), torch.tensor([21, 13, 7]), 21)
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)
    assert kernels[2, :7].abs().sum() == 0


def test_gaussian_kernels_match_separable_gaussians():
    """Isotropic and axis-aligned anisotropic kernels are outer products of 1-D Gaussians."""
    kernels = gaussian_like_kernels(
        torch.tensor([0, 1]),
        sigma_x=torch.tensor([1.3, 2.0]),
        sigma_y=torch.tensor([0.0, 0.7]),
        rotation=torch.tensor([0.0, 0.0]),
        beta=torch.tensor([1.0, 1.0]),
        sizes=torch.tensor([21, 21]),
        pad_to=21,
    )
    iso = torch.outer(gaussian_kernel_1d(21, 1.3), gaussian_kernel_1d(21, 1.3))
    aniso = torch.outer(gaussian_kernel_1d(21, 0.7), gaussian_kernel_1d(21, 2.0))  # rows: y, columns: x
    assert torch.allclose(kernels[0], iso, atol=1e-6)
    assert torch.allclose(kernels[1], aniso, atol=1e-6)


def test_generalized_gaussian_with_beta_one_is_gaussian():
    args = dict(sigma_x=torch.tensor([1.5, 1.5]), sigma_y=torch.tensor([0.8, 0.8]), rotation=torch.tensor([0.6, 0.6]))
    kernels = gaussian_like_kernels(
        torch.tensor([1, 3]), beta=torch.tensor([1.0, 1.0]), sizes=torch.tensor([15, 15]), pad_to=21, **args
    )
    assert torch.allclose(kernels[0], kernels[1], atol=1e-6)


def test_random_kernels_differ_per_sample_and_sum_to_one():
    kernels = random_blur_kernels(BlurKernelConfig(), 8, 21, seeded(0))
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(8), atol=1e-5)
    flat = kernels.flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 1e-4
    sinc = random_final_sinc_kernels(1.0, (7, 21), (math.pi / 3, math.pi), 4, 21, seeded(0))
    assert torch.allclose(sinc.sum(dim=(1, 2)), torch.ones(4), atol=1e-5)
    pulses = random_final_sinc_kernels(0.0, (7, 21), (math.pi / 3, math.pi), 4, 21, seeded(0))
    assert (pulses.flatten(1).max(dim=1).values == 1).all()


def test_filter2d_applies_each_samples_own_kernel():
    images = natural_like(batch=2)
    identity = torch.zeros(21, 21)
    identity[10, 10] = 1
    blur = torch.outer(gaussian_kernel_1d(21, 2.0), gaussian_kernel_1d(21, 2.0))
    out = ops.filter2d(images, torch.stack([identity, blur]))
    assert torch.allclose(out[0], images[0], atol=1e-6)
    assert torch.allclose(out[1], ops.gaussian_blur(images[1:], 2.0, 21)[0], atol=1e-5)


# ------------------------------------------------------------------------------------------ noise, jpeg


def test_gaussian_noise_has_requested_sigma_and_gray_noise_is_shared():
    images = torch.full((2, 3, 64, 64), 0.5)
    sigma = torch.tensor([10.0, 25.0])
    noise = ops.gaussian_noise(images, sigma, torch.tensor([False, True]), seeded(0))
    assert noise[0].std().item() == pytest.approx(10 / 255, rel=0.05)
    assert noise[1].std().item() == pytest.approx(25 / 255, rel=0.05)
    assert torch.equal(noise[1, 0], noise[1, 2])
    assert not torch.equal(noise[0, 0], noise[0, 2])


def test_poisson_noise_scales_and_gray_noise_is_shared():
    images = natural_like(batch=2)
    colour = ops.poisson_noise(images, torch.tensor([1.0, 3.0]), torch.tensor([False, False]), seeded(0))
    assert 0 < colour[0].std() < colour[1].std()
    gray = ops.poisson_noise(images, torch.tensor([1.0, 1.0]), torch.tensor([True, True]), seeded(0))
    assert gray.std() > 0 and torch.equal(gray[:, 0], gray[:, 1])


@pytest.mark.parametrize("quality, size", [(50, (64, 64)), (30, (40, 56)), (90, (64, 64))])
def test_torch_jpeg_is_close_to_pil_jpeg(quality, size):
    """Our JPEG reproduces libjpeg's artefacts: much closer to PIL's output than the uncompressed input is."""
    images = natural_like(batch=2, height=size[0], width=size[1])
    ours = jpeg_compress(images, quality)
    reference = pil_jpeg(images, quality)
    assert psnr(ours, reference) > 30
    assert psnr(ours, reference) > psnr(images, reference) + 5


def test_jpeg_quality_is_per_sample():
    images = natural_like(batch=1).expand(2, -1, -1, -1)
    out = jpeg_compress(images, torch.tensor([10.0, 95.0]))
    assert psnr(out[0:1], images[0:1]) + 5 < psnr(out[1:2], images[1:2])


def test_usm_sharpening_adds_high_frequencies():
    images = natural_like(batch=2)
    sharpened = ops.usm_sharpen(images)
    assert high_frequency_energy(sharpened) > 1.2 * high_frequency_energy(images)
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(ops.usm_sharpen(flat), flat, atol=1e-6)


# ------------------------------------------------------------------------------------------- realesrgan


@pytest.mark.parametrize("size", [(64, 64), (64, 96), (16, 16)])
def test_realesrgan_output_sizes_and_range(size):
    hr = natural_like(batch=3, height=size[0], width=size[1])
    lr, target = RealESRGANDegradation()(hr, seeded(1))
    assert lr.shape == (3, 3, size[0] // 4, size[1] // 4)
    assert target.shape == hr.shape
    assert lr.min() >= 0 and lr.max() <= 1
    assert torch.equal(lr, ops.quantize_8bit(lr))


def test_realesrgan_same_seed_same_output_different_seed_different_output():
    hr = natural_like(batch=3)
    degradation = RealESRGANDegradation()
    lr_a, target_a = degradation(hr, seeded(7))
    lr_b, target_b = degradation(hr, seeded(7))
    lr_c, _ = degradation(hr, seeded(8))
    assert torch.equal(lr_a, lr_b) and torch.equal(target_a, target_b)
    assert not torch.equal(lr_a, lr_c)


def test_realesrgan_degrades_each_sample_differently():
    hr = natural_like(batch=1).expand(4, -1, -1, -1)
    lr, _ = RealESRGANDegradation()(hr, seeded(3))
    flat = lr.flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 1e-3


def test_realesrgan_target_is_sharpened_hr_or_hr():
    hr = natural_like(batch=2)
    _, sharpened = RealESRGANDegradation()(hr, seeded(0))
    assert torch.allclose(sharpened, ops.usm_sharpen(hr))
    _, plain = RealESRGANDegradation(RealESRGANDegradationConfig(sharpen_target=False))(hr, seeded(0))
    assert torch.equal(plain, hr)


def test_realesrgan_rejects_sizes_not_divisible_by_scale():
    with pytest.raises(ValueError, match="multiple of the scale"):
        RealESRGANDegradation()(torch.rand(1, 3, 66, 64), seeded(0))


# ------------------------------------------------------------------------------------------------ paper


def test_paper_degradations_sizes_and_determinism():
    hr = natural_like(batch=2, height=64, width=96)
    for kind in PAPER_DEGRADATIONS:
        lr = paper_degradation(hr, kind, seeded(0))
        assert lr.shape == (2, 3, 16, 24)
        assert torch.equal(lr, ops.quantize_8bit(lr))
        assert torch.equal(lr, paper_degradation(hr, kind, seeded(0)))
    with pytest.raises(ValueError, match="bicubic, blur, noise, noise_jpeg"):
        paper_degradation(hr, "jpeg", seeded(0))


def test_paper_blur_is_smoother_than_bicubic():
    hr = natural_like(batch=2, height=128, width=128)
    bicubic = paper_degradation(hr, "bicubic")
    blurred = paper_degradation(hr, "blur")
    assert high_frequency_energy(blurred) < 0.7 * high_frequency_energy(bicubic)


def test_paper_noise_has_sigma_40_and_noise_jpeg_is_compressed():
    hr = torch.full((2, 3, 256, 256), 0.5)
    bicubic = paper_degradation(hr, "bicubic")
    noisy = paper_degradation(hr, "noise", seeded(0))
    assert (noisy - bicubic).std().item() * 255 == pytest.approx(40, rel=0.05)
    assert not torch.equal(noisy, paper_degradation(hr, "noise", seeded(1)))
    noise_20 = ops.gaussian_noise(bicubic, torch.tensor([20.0, 20.0]), torch.tensor([False, False]), seeded(0))
    noisy_20 = bicubic + noise_20
    noise_jpeg = paper_degradation(hr, "noise_jpeg", seeded(0))
    assert torch.allclose(noise_jpeg, pil_jpeg(ops.quantize_8bit(noisy_20), 50))
    # JPEG at quality 50 removes much of the noise energy.
    assert (noise_jpeg - bicubic).std() * 255 < 15


# ----------------------------------------------------------------------------------------------- folder


def _write_images(folder, sizes):
    folder.mkdir()
    for index, (width, height) in enumerate(sizes):
        array = (natural_like(batch=1, height=height, width=width, seed=index)[0] * 255).byte().permute(1, 2, 0)
        Image.fromarray(array.numpy()).save(folder / f"img{index}.png")


def test_degrade_folder_writes_pairs_and_is_deterministic(tmp_path):
    _write_images(tmp_path / "hr_in", [(80, 72), (64, 64)])
    written = degrade_folder(tmp_path / "hr_in", tmp_path / "out", kind="realesrgan", crop=64, seed=5)
    assert [path.name for path in written] == ["img0.png", "img1.png"]
    for name in ("img0.png", "img1.png"):
        assert Image.open(tmp_path / "out" / "hr" / name).size == (64, 64)
        assert Image.open(tmp_path / "out" / "lr" / name).size == (16, 16)
    degrade_folder(tmp_path / "hr_in", tmp_path / "again", kind="realesrgan", crop=64, seed=5)
    for name in ("img0.png", "img1.png"):
        first = np.asarray(Image.open(tmp_path / "out" / "lr" / name))
        assert np.array_equal(first, np.asarray(Image.open(tmp_path / "again" / "lr" / name)))
    assert not any(path.name.startswith(".") for path in (tmp_path / "out" / "lr").iterdir())


def test_degrade_folder_without_crop_keeps_multiples_of_scale(tmp_path):
    _write_images(tmp_path / "hr_in", [(70, 45)])
    degrade_folder(tmp_path / "hr_in", tmp_path / "out", kind="noise_jpeg", crop=None)
    assert Image.open(tmp_path / "out" / "hr" / "img0.png").size == (68, 44)
    assert Image.open(tmp_path / "out" / "lr" / "img0.png").size == (17, 11)


def test_degrade_folder_reports_bad_images_and_keeps_good_ones(tmp_path):
    _write_images(tmp_path / "hr_in", [(64, 64), (32, 32)])
    (tmp_path / "hr_in" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DegradeFolderError) as raised:
        degrade_folder(tmp_path / "hr_in", tmp_path / "out", kind="bicubic", crop=64)
    message = str(raised.value)
    assert "broken.png" in message and "img1.png" in message and "smaller than the crop" in message
    assert [path.name for path in raised.value.written] == ["img0.png"]
    assert (tmp_path / "out" / "lr" / "img0.png").exists()


def test_degrade_folder_rejects_bad_arguments(tmp_path):
    _write_images(tmp_path / "hr_in", [(64, 64)])
    with pytest.raises(ValueError, match="Unknown degradation kind"):
        degrade_folder(tmp_path / "hr_in", tmp_path / "out", kind="gaussian")
    with pytest.raises(ValueError, match="multiple of the scale"):
        degrade_folder(tmp_path / "hr_in", tmp_path / "out", crop=30)
    with pytest.raises(ValueError, match="not a folder"):
        degrade_folder(tmp_path / "missing", tmp_path / "out")
