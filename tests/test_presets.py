"""The small AddSR's architecture (addsr.models.presets): the byte tokenizer, the spec's configs, the base folder
that teacher training starts from, and the size budget of the shipped weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file

from addsr import AddSRPipeline
from addsr.io import resize_images
from addsr.models import ControlNet, UNet
from addsr.models.presets import (
    DISCRIMINATOR_BACKBONE,
    SMALL,
    SmallModelSpec,
    build_small_base,
    build_small_models,
    byte_level_clip_tokenizer,
)
from addsr.config import merge_config
from addsr.training.config import TeacherTrainingConfig
from addsr.training.teacher import train_teacher

from conftest import MAX_SHIPPED_MB

TINY = SmallModelSpec(
    vae_channels=(8, 8, 8), unet_channels=(16, 32), norm_groups=8, attention_head_width=8, text_width=16,
    conditioning_channels=8,
)


def test_tokenizer_of_length_two_gives_every_prompt_the_same_tokens():
    tokenizer = byte_level_clip_tokenizer(2)
    ids = [tokenizer(text, padding="max_length", max_length=2, truncation=True).input_ids
           for text in ("", "clean, high-resolution, 8k", "a dog")]
    assert ids[0] == ids[1] == ids[2] == [tokenizer.bos_token_id, tokenizer.eos_token_id]


def test_longer_tokenizer_keeps_one_token_per_byte():
    tokenizer = byte_level_clip_tokenizer(8)
    ids = tokenizer("ab", padding="max_length", max_length=8, truncation=True).input_ids
    assert len(ids) == 8 and ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids[1:3]).strip() == "ab"
    assert tokenizer("ab").input_ids != tokenizer("ba").input_ids


def test_tokenizer_needs_room_for_start_and_end():
    with pytest.raises(ValueError, match="at least 2"):
        byte_level_clip_tokenizer(1)


@pytest.mark.parametrize(("vae_channels", "latent_channels"), [((8, 8, 8), 4), ((8, 8, 8, 8), 4), ((8, 8, 8), 8)])
def test_controlnet_condition_embedding_reaches_the_latent_size(vae_channels, latent_channels):
    """Whatever the VAE's factor and width, the ControlNet's image condition lands on the U-Net's latent grid."""
    spec = dataclasses.replace(TINY, vae_channels=vae_channels, latent_channels=latent_channels)
    models = build_small_models(spec)
    image = torch.rand(1, 3, 32, 32)
    latents = models.vae.encode(image * 2 - 1).latent_dist.mode()
    assert latents.shape[1:] == (latent_channels, 32 // spec.downsampling_factor, 32 // spec.downsampling_factor)
    text = models.text_encoder(models.tokenizer([""], return_tensors="pt").input_ids)[0]
    residuals = models.controlnet(latents, 10, text, image)
    out = models.unet(latents, 10, text, down_block_additional_residuals=residuals.down_block_res_samples,
                      mid_block_additional_residual=residuals.mid_block_res_sample).sample
    assert out.shape == latents.shape


def test_shipped_small_model_fits_the_size_budget():
    counts = build_small_models(SMALL).parameter_counts()
    megabytes = sum(counts.values()) * 4 / 1e6  # float32 safetensors
    assert megabytes <= MAX_SHIPPED_MB, f"{counts} is {megabytes:.1f} MB"
    assert not SMALL.unet_config()["use_image_cross_attention"]


def test_base_folder_loads_as_a_pipeline_and_upscales(tmp_path):
    folder = build_small_base(tmp_path / "base", spec=TINY)
    assert {p.name for p in folder.iterdir()} == {
        "vae", "text_encoder", "tokenizer", "scheduler", "unet", "controlnet", "discriminator"}
    assert not list(tmp_path.glob(".base-*")), "the staging folder must be renamed into place"
    pipe = AddSRPipeline.from_pretrained(folder, device="cpu")
    pipe.progress_bar = False
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    result = pipe(lr, num_steps=2, process_size=32, output_type="pt",
                  generator=torch.Generator().manual_seed(0))
    assert result.images.shape == (1, 3, 32, 32) and result.images.min() >= 0 and result.images.max() <= 1
    condition = resize_images(lr, (32, 32)).clamp(0, 1)  # without color_fix.json: the released AdaIN against it
    torch.testing.assert_close(result.images.mean(dim=(2, 3)), condition.mean(dim=(2, 3)), atol=0.03, rtol=0)


def test_base_folder_uses_a_given_vae_and_rejects_a_mismatched_one(tmp_path):
    vae = build_small_models(TINY).vae
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(0.25)
    folder = build_small_base(tmp_path / "base", vae=vae, spec=TINY)
    assert torch.equal(AutoencoderKL.from_pretrained(folder / "vae").decoder.conv_out.bias, vae.decoder.conv_out.bias)
    wrong = build_small_models(dataclasses.replace(TINY, vae_channels=(8, 8, 8, 8))).vae
    with pytest.raises(ValueError, match="downsamples by 8"):
        build_small_base(tmp_path / "other", vae=wrong, spec=TINY)
    with pytest.raises(FileExistsError):
        build_small_base(folder, spec=TINY)


def test_discriminator_backbones_load_into_their_timm_model(tmp_path):
    folder = build_small_base(tmp_path / "base", spec=TINY)
    feature = load_file(folder / "discriminator" / "feature.safetensors")
    condition = load_file(folder / "discriminator" / "condition.safetensors")
    timm.create_model(DISCRIMINATOR_BACKBONE, pretrained=False).load_state_dict(feature)
    assert not torch.equal(feature["patch_embed.proj.weight"], condition["patch_embed.proj.weight"])


def test_teacher_training_starts_from_the_base_folder(tmp_path):
    """The documented start: base_model and init_model both the base folder, everything trained."""
    base = build_small_base(tmp_path / "base", spec=TINY)
    hr = tmp_path / "hr"
    hr.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(hr / f"{index}.png")
    config = merge_config(TeacherTrainingConfig(), {
        "model": {"base_model": str(base), "init_model": str(base)}, "train_all": True,
        "data": {"hr": [str(hr)], "crop_size": 32, "num_workers": 0},
        "optimization": {"batch_size": 2, "mixed_precision": "no", "max_steps": 1, "learning_rate": 1e-3},
        "output": {"output_dir": str(tmp_path / "run"), "tensorboard": False, "progress_bar": False,
                   "validation_every": 0},
    })
    checkpoint = train_teacher(config)
    before, after = UNet.from_pretrained(base / "unet"), UNet.from_pretrained(checkpoint / "unet")
    assert not torch.equal(before.conv_out.weight, after.conv_out.weight)
    controlnet = ControlNet.from_pretrained(checkpoint / "controlnet")
    assert controlnet.config.conditioning_embedding_out_channels == list(TINY.controlnet_conditioning_channels())
    assert (checkpoint / "vae").is_dir()
