"""The small VAE trainer (addsr.training.vae): its loss, reconstruction of any image size, the scaling factor, and a
whole tiny run that writes the VAE, its metrics and a base-model folder; and the small PSR decoder distilled from a
VAE with the same loop (addsr.training.decoder)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from addsr.config import ConfigError, load_config
from addsr.denoiser import latent_factor
from addsr.speedups import load_small_decoder
from addsr.training.config import DistillationConfig, OptimizationConfig, TeacherTrainingConfig
from addsr.training.decoder import DecoderTrainingConfig, decoder_loss, train_decoder
from addsr.training.runner import learning_rate_schedule
from addsr.training.vae import (
    VAELossConfig,
    VAEModelConfig,
    VAETrainingConfig,
    image_gradients,
    reconstruct,
    train_vae,
    vae_loss,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_VAE = {"block_out_channels": [8, 8, 8], "norm_groups": 8}


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return VAEModelConfig(block_out_channels=(8, 8, 8), norm_groups=8).build()


def test_image_gradients_of_a_ramp():
    ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 4, 5)
    horizontal, vertical = image_gradients(ramp)
    assert horizontal.shape == (1, 1, 4, 4) and torch.all(horizontal == 1)
    assert vertical.shape == (1, 1, 3, 5) and torch.all(vertical == 0)


def test_loss_terms_and_their_weights():
    vae = tiny_vae()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    losses = vae_loss(vae, images, VAELossConfig(gradient_weight=0.5, kl_weight=0.1),
                      torch.Generator().manual_seed(0))
    expected = losses["l1"] + 0.5 * losses["gradient"] + 0.1 * losses["kl"]
    assert torch.allclose(losses["total"], expected)
    losses["total"].backward()
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0


def test_reconstruct_keeps_any_image_size():
    image = torch.rand(1, 3, 13, 22)
    out = reconstruct(tiny_vae(), image)
    assert out.shape == image.shape and 0 <= out.min() and out.max() <= 1


def write_images(folder: Path, count: int, size: tuple[int, int]) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        gradient = np.linspace(0, 255, size[1], dtype=np.float32)[None, :, None].repeat(size[0], 0).repeat(3, 2)
        noisy = np.clip(gradient + rng.normal(0, 20, (*size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{index}.png")
    return folder


def test_a_tiny_run_writes_vae_metrics_and_base(tmp_path):
    hr = write_images(tmp_path / "hr", 3, (24, 28))
    val = write_images(tmp_path / "val", 2, (18, 21))
    config = load_config(None, VAETrainingConfig, [
        f"model.block_out_channels={TINY_VAE['block_out_channels']}", "model.norm_groups=8",
        f"data.hr=[{hr}]", "data.crop_size=16", "data.num_workers=0", "optimization.batch_size=2",
        "optimization.max_steps=12", "optimization.learning_rate=3e-3", "optimization.device=cpu",
        f"output.output_dir={tmp_path / 'run'}", "output.checkpoint_every=5", "output.scale_batches=2",
        f"output.validation_images=[{val}]", f"output.base_model={tmp_path / 'base'}", "output.progress_bar=false",
    ])
    probe = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    before = reconstruct(tiny_vae(), probe)  # the run starts from these weights (same seed)
    folder = train_vae(config)

    vae = AutoencoderKL.from_pretrained(folder)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 12 and len(metrics["validation_psnr_y"]) == 2
    assert np.isfinite(metrics["validation_psnr_y_mean"])
    assert vae.config.scaling_factor == pytest.approx(1 / metrics["latent_std"])
    assert not torch.allclose(reconstruct(vae, probe), before)
    base_vae = AutoencoderKL.from_pretrained(tmp_path / "base" / "vae")
    assert base_vae.config.scaling_factor == vae.config.scaling_factor
    assert torch.equal(base_vae.encoder.conv_in.weight, vae.encoder.conv_in.weight)
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_decoder_fine_tuning_keeps_the_latent_space(tmp_path):
    """``trainable: decoder`` changes the decoder only: same encoder, same scaling factor, so same latents."""
    hr = write_images(tmp_path / "hr", 3, (24, 28))
    start = tiny_vae()
    start.register_to_config(scaling_factor=0.37)
    start.save_pretrained(tmp_path / "start")
    config = load_config(None, VAETrainingConfig, [
        f"model.init={tmp_path / 'start'}", "model.trainable=decoder", f"data.hr=[{hr}]", "data.crop_size=16",
        "data.num_workers=0", "optimization.batch_size=2", "optimization.max_steps=6",
        "optimization.learning_rate=3e-3", "optimization.device=cpu", f"output.output_dir={tmp_path / 'run'}",
        "output.scale_batches=1", "output.progress_bar=false",
    ])
    tuned = AutoencoderKL.from_pretrained(train_vae(config))

    assert tuned.config.scaling_factor == 0.37
    for name, weight in start.state_dict().items():
        changed = not torch.equal(weight, tuned.state_dict()[name])
        assert changed == name.startswith(("decoder.", "post_quant_conv.")), name
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["trained_parameters"] == sum(
        p.numel() for p in [*start.decoder.parameters(), *start.post_quant_conv.parameters()])


def test_decoder_fine_tuning_needs_a_vae_to_start_from():
    with pytest.raises(ConfigError, match="model.init"):
        load_config(None, VAETrainingConfig, ["model.trainable=decoder"])


def test_training_lowers_the_loss():
    """A few steps on one fixed batch must reduce the reconstruction loss."""
    vae = tiny_vae()
    images = torch.linspace(-1, 1, 16).view(1, 1, 1, 16).expand(2, 3, 16, 16).contiguous()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    config = VAELossConfig()
    losses = []
    for step in range(15):
        loss = vae_loss(vae, images, config, torch.Generator().manual_seed(step))["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_small_configs_chain_their_outputs():
    vae = load_config(ROOT / "configs" / "small" / "vae.yaml", VAETrainingConfig)
    teacher = load_config(ROOT / "configs" / "small" / "teacher.yaml", TeacherTrainingConfig)
    distill = load_config(ROOT / "configs" / "small" / "distill.yaml", DistillationConfig)
    assert vae.output.base_model == teacher.model.base_model == teacher.model.init_model
    assert teacher.train_all and distill.trainable == ("unet", "controlnet")
    assert distill.discriminator.feature_checkpoint.startswith(teacher.model.base_model)
    decoder = load_config(ROOT / "configs" / "small" / "vae-decoder.yaml", VAETrainingConfig)
    assert decoder.model.trainable == "decoder" and decoder.model.init == f"{vae.output.output_dir}/vae"
    continued = load_config(ROOT / "configs" / "small" / "vae-continued.yaml", VAETrainingConfig)
    assert continued.model.trainable == "all" and continued.model.init == decoder.model.init
    assert continued.output.base_model is None and continued.output.output_dir != vae.output.output_dir
    moved = load_config(ROOT / "configs" / "small" / "teacher-continued.yaml", TeacherTrainingConfig)
    assert moved.model.init_model == f"{teacher.output.output_dir}/checkpoints/latest"
    assert moved.model.vae_model == continued.output.output_dir and moved.train_all
    assert distill.model.teacher_model == f"{moved.output.output_dir}/checkpoints/latest"


@pytest.mark.parametrize(("final", "decays"), [(1e-4, True), (None, False)])
def test_learning_rate_schedule(final, decays):
    config = OptimizationConfig(learning_rate=1e-3, final_learning_rate=final, max_steps=4)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    schedule = learning_rate_schedule(optimizer, config)
    rates = []
    for _ in range(config.max_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    if decays:
        assert rates[0] == pytest.approx(1e-3) and rates[0] > rates[1] > rates[2] > rates[3] > 1e-4
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    else:
        assert rates == pytest.approx([1e-3] * 4)


def test_unknown_vae_config_key_is_named():
    with pytest.raises(ConfigError, match="learning_rat"):
        load_config(None, VAETrainingConfig, ["optimization.learning_rat=1"])


def test_train_vae_command(tmp_path):
    from typer.testing import CliRunner

    from addsr.cli import app

    hr = write_images(tmp_path / "hr", 2, (24, 28))
    (tmp_path / "vae.yaml").write_text("optimization:\n  max_steps: 2\n  batch_size: 2\n")
    overrides = [f"model.block_out_channels={TINY_VAE['block_out_channels']}", "model.norm_groups=8",
                 f"data.hr=[{hr}]", "data.crop_size=16", "data.num_workers=0", "optimization.device=cpu",
                 f"output.output_dir={tmp_path / 'run'}", "output.scale_batches=1", "output.progress_bar=false"]
    arguments = ["train", "vae", str(tmp_path / "vae.yaml")] + [item for o in overrides for item in ("--set", o)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert AutoencoderKL.from_pretrained(tmp_path / "run" / "vae").config.block_out_channels == list(
        TINY_VAE["block_out_channels"])


def test_a_killed_run_resumes_through_the_shared_runner(tmp_path, caplog):
    """The VAE trains in the shared loop: checkpoints with their training state, and a resumed run ends where an
    uninterrupted one does."""
    hr = write_images(tmp_path / "hr", 3, (24, 28))

    def run(output: str, steps: int):
        return train_vae(load_config(None, VAETrainingConfig, [
            f"model.block_out_channels={TINY_VAE['block_out_channels']}", "model.norm_groups=8", f"data.hr=[{hr}]",
            "data.crop_size=16", "data.num_workers=0", "optimization.batch_size=2", f"optimization.max_steps={steps}",
            "optimization.learning_rate=3e-3", "optimization.final_learning_rate=1e-3", "optimization.device=cpu",
            f"output.output_dir={tmp_path / output}", "output.checkpoint_every=2", "output.scale_batches=1",
            "output.progress_bar=false",
        ]))

    run("whole", 4)
    run("resumed", 4)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-000004")  # as if killed after the step-2 checkpoint
    with caplog.at_level(logging.INFO, logger="addsr.training.runner"):
        run("resumed", 4)
    assert f"Resumed from {tmp_path / 'resumed' / 'checkpoints' / 'step-000002'} at step 2" in caplog.text
    for name in ("whole", "resumed"):
        assert (tmp_path / name / "checkpoints" / "step-000004" / "training_state" / "state.json").is_file()
    whole, resumed = (AutoencoderKL.from_pretrained(tmp_path / name / "checkpoints" / "step-000004" / "vae")
                      for name in ("whole", "resumed"))
    for key, weight in whole.state_dict().items():
        assert torch.equal(weight, resumed.state_dict()[key]), key


def test_the_train_decoder_command_distils_a_tiny_decoder_that_imitates_the_vae_decoder(tmp_path):
    """``addsr train decoder``: an AutoencoderTiny decoder learns the VAE's decodes of the VAE's own latents, in the
    shared training loop (its checkpoints), its encoder half untouched."""
    from typer.testing import CliRunner

    from addsr.cli import app

    hr = write_images(tmp_path / "hr", 3, (24, 28))
    val = write_images(tmp_path / "val", 1, (16, 16))
    tiny_vae().save_pretrained(tmp_path / "vae")
    overrides = [
        f"model.vae={tmp_path / 'vae'}", "model.channels=8", "model.blocks_per_level=1", f"data.hr=[{hr}]",
        "data.crop_size=16", "data.num_workers=0", "optimization.batch_size=2", "optimization.max_steps=20",
        "optimization.learning_rate=3e-3", "optimization.device=cpu", f"output.output_dir={tmp_path / 'run'}",
        "output.checkpoint_every=10", f"output.validation_images=[{val}]", "output.progress_bar=false",
    ]
    config = load_config(None, DecoderTrainingConfig, overrides)
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    torch.manual_seed(config.optimization.seed)  # as the run builds it
    untrained = config.model.build(vae)
    before = decoder_loss(vae, untrained, images, config.loss, torch.Generator().manual_seed(0))["total"]
    result = CliRunner().invoke(app, ["train", "decoder", str(ROOT / "configs" / "small" / "psr-decoder.yaml")]
                                + [item for o in overrides for item in ("--set", o)])
    assert result.exit_code == 0, result.output
    decoder = load_small_decoder(tmp_path / "run" / "decoder")
    after = decoder_loss(vae, decoder, images, config.loss, torch.Generator().manual_seed(0))["total"]

    assert after < before
    assert decoder.config.scaling_factor == 1.0 and latent_factor(decoder) == latent_factor(vae)
    assert torch.equal(decoder.encoder.layers[0].weight, untrained.encoder.layers[0].weight)  # not trained
    assert (tmp_path / "run" / "checkpoints" / "step-000010" / "decoder").is_dir()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 20 and len(metrics["psnr_y_against_vae"]) == 1
    assert set(metrics["seconds_per_decode"]) == {"vae", "decoder"}


def test_decoder_distillation_needs_the_vae():
    config = DecoderTrainingConfig()
    with pytest.raises(ValueError, match="model.vae"):
        train_decoder(config)


@pytest.mark.parametrize("name", ["psr-decoder.yaml", "small/psr-decoder.yaml"])
def test_the_psr_decoder_recipes_load(name):
    config = load_config(ROOT / "configs" / name, DecoderTrainingConfig)
    assert config.model.vae and config.data.hr and config.output.validation_images
