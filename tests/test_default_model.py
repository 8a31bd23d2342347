"""The small AddSR shipped in the package (docs/small-model.md): it is complete, within its size budget, the
architecture of ``addsr.models.presets.SMALL``, the default of the Python API, ``addsr upscale`` and ``addsr eval``,
and it restores a validation image better than an untrained model of the same architecture would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from addsr import DEFAULT_MODEL_DIR, AddSRPipeline, ColorFix
from addsr.cli import app
from addsr.degradations import paper_degradation
from addsr.evaluation import parse_method
from addsr.io import pil_to_tensor
from addsr.metrics import psnr
from addsr.models.presets import SMALL, build_small_models
from addsr.model_folder import BASE_COMPONENTS

from conftest import MAX_SHIPPED_MB, shared_path

REPOSITORY = Path(__file__).resolve().parents[1]
SHIPPED_PARTS = ("unet", "controlnet", *BASE_COMPONENTS)


@pytest.fixture(scope="module")
def default_pipe() -> AddSRPipeline:
    pipe = AddSRPipeline.from_pretrained(device="cpu")
    pipe.progress_bar = False
    return pipe


def test_the_default_model_is_complete_and_under_50_mb():
    assert sorted(path.name for path in DEFAULT_MODEL_DIR.iterdir() if path.is_dir()) == sorted(SHIPPED_PARTS)
    weights = list(DEFAULT_MODEL_DIR.glob("*/*.safetensors"))
    assert {path.parent.name for path in weights} == {"unet", "controlnet", "vae", "text_encoder"}
    assert not list(DEFAULT_MODEL_DIR.rglob("*.bin")) and not list(DEFAULT_MODEL_DIR.rglob("training_state"))
    assert sum(path.stat().st_size for path in DEFAULT_MODEL_DIR.rglob("*")) / 1e6 <= MAX_SHIPPED_MB


def test_the_default_model_has_the_small_architecture(default_pipe):
    reference = build_small_models(SMALL)
    for name in ("unet", "controlnet", "vae", "text_encoder"):
        shipped = {key: value.shape for key, value in getattr(default_pipe, name).state_dict().items()}
        assert shipped == {key: value.shape for key, value in getattr(reference, name).state_dict().items()}, name
    assert default_pipe.tagger is None
    assert json.loads((DEFAULT_MODEL_DIR / "unet" / "config.json").read_text())["use_image_cross_attention"] is False


def test_the_default_model_upscales_reproducibly(default_pipe):
    image = Image.open(REPOSITORY / "examples" / "astronaut.png").crop((32, 32, 64, 64))
    run = lambda: default_pipe(image, num_steps=2, process_size=128, output_type="np",  # noqa: E731
                               generator=torch.Generator().manual_seed(3)).images
    first, second = run(), run()
    assert first.shape == (1, 128, 128, 3) and first.min() >= 0 and first.max() <= 1
    np.testing.assert_array_equal(first, second)
    shrunk = F.interpolate(torch.from_numpy(first).permute(0, 3, 1, 2), size=(32, 32), mode="area")
    assert psnr(shrunk, pil_to_tensor(image), crop_border=0) > 25  # consistent with its input (28.5 dB when written)


def test_the_trained_weights_restore_better_than_random_ones(default_pipe):
    """On a Set5 image degraded x4 by bicubic, the trained model is far closer to the HR image than the same
    architecture with its random initial U-Net and ControlNet (and the trained VAE), both with the shipped colour
    fix: 22.0 against 14.6 dB when shipped. Guards against shipping the wrong checkpoint."""
    hr = torch.from_numpy(np.array(Image.open(shared_path("data/val/set5/img_001.png")).convert("RGB")))
    hr = hr.permute(2, 0, 1)[None, :, 192:320, 192:320].float() / 255
    lr = paper_degradation(hr, "bicubic")
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    trained = default_pipe(lr, num_steps=1, process_size=128, output_type="pt", generator=generator()).images
    untrained_parts = build_small_models(SMALL)
    untrained = AddSRPipeline(
        unet=untrained_parts.unet, controlnet=untrained_parts.controlnet, vae=default_pipe.vae,
        text_encoder=default_pipe.text_encoder, tokenizer=default_pipe.tokenizer, schedule=default_pipe.schedule,
        tagger=None, color_fix=default_pipe.default_color_fix,
    )
    untrained.progress_bar = False
    baseline = untrained(lr, num_steps=1, process_size=128, output_type="pt", generator=generator()).images
    assert psnr(trained, hr) > psnr(baseline, hr) + 3


def test_upscale_without_model_uses_the_default(tmp_path):
    result = CliRunner().invoke(app, ["upscale", str(REPOSITORY / "examples" / "astronaut.png"), "-o",
                                      str(tmp_path), "--steps", "1", "--seed", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "astronaut.png").size == (512, 512)


def test_eval_method_without_folder_is_the_default_model():
    method = parse_method("addsr,steps=1,name=small", device="cpu")
    assert method.model_dir == DEFAULT_MODEL_DIR.resolve() and method.sampler.num_steps == 1 and method.name == "small"
    assert method.settings["color_fix"] == "wavelet" and method.settings["wavelet_levels"] == 3


def test_the_default_model_uses_the_colour_fix_of_its_model_card(default_pipe):
    """docs/experiments/2026-11-27-colour-fix-levels.md: wavelet at 3 levels, chosen on training images."""
    assert default_pipe.default_color_fix == ColorFix("wavelet", 3)
