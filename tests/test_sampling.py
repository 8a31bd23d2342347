"""addsr.sampling.SamplerSettings: one frozen object, validated once, that the pipeline, the command line, the
evaluation and training's validation all take."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from addsr.colorfix import ColorFix
from addsr.config import load_config
from addsr.evaluation import parse_method
from addsr.sampling import DEFAULT_SAMPLER, SamplerSettings, SettingError
from addsr.training.config import DistillationConfig


@pytest.mark.parametrize(("changes", "name"), [
    ({"num_steps": 5}, "num_steps"), ({"timesteps": [249, 999]}, "timesteps"), ({"timesteps": []}, "timesteps"),
    ({"psr_weight": 1.5}, "psr_weight"), ({"start_point": "hr"}, "start_point"), ({"color_fix": "magic"}, "color_fix"),
    ({"wavelet_levels": 0}, "wavelet_levels"), ({"upscale": 0}, "upscale"), ({"tile": -1}, "tile"),
    ({"tile": 64, "tile_overlap": 40}, "tile_overlap"),
])
def test_each_bad_setting_is_named(changes, name):
    with pytest.raises(SettingError) as caught:
        SamplerSettings(**changes)
    assert caught.value.name == name and name.split("_")[0] in str(caught.value)


def test_settings_are_frozen_and_resolve_steps_and_colour_fix():
    settings = SamplerSettings(num_steps=2, prompt=["a", "b"], timesteps=None, color_fix="wavelet")
    assert settings.prompt == ("a", "b") and settings.timestep_list() == [999, 749]
    assert SamplerSettings(timesteps=[900, 100]).timestep_list() == [900, 100]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.num_steps = 3
    assert settings.final_color_fix(ColorFix("adain", 3)) == ColorFix("wavelet", 3)
    assert DEFAULT_SAMPLER.final_color_fix(ColorFix("wavelet", 2)) == ColorFix("wavelet", 2)


def test_the_pipeline_takes_settings_or_keywords_alike(plain_pipe):
    image = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    settings = SamplerSettings(num_steps=2, psr_weight=0.3, color_fix="wavelet", process_size=32)

    def run(**options):
        return plain_pipe(image, generator=torch.Generator().manual_seed(1), output_type="pt", **options).images

    torch.testing.assert_close(run(settings=settings),
                               run(num_steps=2, psr_weight=0.3, color_fix="wavelet", process_size=32), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not both"):
        run(settings=settings, num_steps=1)


def test_a_method_spec_takes_any_setting_read_as_config_values(tmp_path):
    (tmp_path / "model").mkdir()
    method = parse_method(f"addsr:{tmp_path / 'model'},steps=2,tile=0,guidance_scale=2,color_fix=none", device="cpu")
    assert (method.sampler.num_steps, method.sampler.tile, method.sampler.guidance_scale) == (2, 0, 2.0)
    assert method.color_fix.method == "none"  # the fix named "none", not "the model's own"
    assert {"tile": 0, "guidance_scale": 2.0}.items() <= method.settings.items()
    assert "tile" not in parse_method(f"addsr:{tmp_path / 'model'}").settings  # defaults are left out
    with pytest.raises(ValueError, match="did you mean 'psr_weight'"):
        parse_method(f"addsr:{tmp_path / 'model'},psr_wieght=1")


def test_training_validation_reads_the_same_settings(tmp_path):
    (tmp_path / "run.yaml").write_text("output:\n  validation_sampler:\n    num_steps: 1\n    color_fix: wavelet\n")
    config = load_config(tmp_path / "run.yaml", DistillationConfig, ["output.validation_sampler.process_size=256"])
    assert config.output.validation_sampler == SamplerSettings(num_steps=1, color_fix="wavelet", process_size=256)
