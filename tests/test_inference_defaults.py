"""A model folder's own inference defaults (inference.json): read by the pipeline, the CLI and the eval method;
an explicit setting always wins; a folder without the file keeps the paper's settings."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from addsr import AddSRPipeline, InferenceDefaults
from addsr.cli import app
from addsr.evaluation import AddSRMethod


def restore(pipe, **kwargs) -> torch.Tensor:
    lr = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    return pipe(lr, num_steps=1, process_size=64, output_type="pt", generator=torch.Generator().manual_seed(1),
                **kwargs).images


@pytest.fixture
def wavelet_model(plain_pipe, tmp_path) -> Path:
    folder = plain_pipe.save_pretrained(tmp_path / "model")
    InferenceDefaults(color_fix="wavelet").save(folder)
    return folder


def test_a_folder_without_the_file_keeps_the_papers_settings(plain_pipe, tmp_path):
    folder = plain_pipe.save_pretrained(tmp_path / "plain")
    (folder / "inference.json").unlink()
    assert AddSRPipeline.from_pretrained(folder).defaults == InferenceDefaults(color_fix="adain")


def test_the_pipeline_uses_the_folders_colour_fix_unless_told_otherwise(wavelet_model, tmp_path):
    pipe = AddSRPipeline.from_pretrained(wavelet_model, device="cpu")
    assert pipe.defaults.color_fix == "wavelet"
    chosen = restore(pipe)
    torch.testing.assert_close(chosen, restore(pipe, color_fix="wavelet"), rtol=0, atol=0)
    assert not torch.allclose(chosen, restore(pipe, color_fix="adain"))
    copy = pipe.save_pretrained(tmp_path / "copy")
    assert InferenceDefaults.from_model_dir(copy) == pipe.defaults


def test_the_cli_uses_the_folders_colour_fix_unless_told_otherwise(wavelet_model, tmp_path):
    image = tmp_path / "lr.png"
    Image.new("RGB", (16, 12), (200, 40, 90)).save(image)
    outputs = {}
    for name, option in (("chosen", []), ("wavelet", ["--color-fix", "wavelet"]), ("adain", ["--color-fix", "adain"])):
        result = CliRunner().invoke(app, ["upscale", str(image), "-o", str(tmp_path / name), "--model",
                                          str(wavelet_model), "--steps", "1", "--seed", "0", "--device", "cpu",
                                          *option])
        assert result.exit_code == 0, result.output
        outputs[name] = (tmp_path / name / "lr.png").read_bytes()
    assert outputs["chosen"] == outputs["wavelet"] != outputs["adain"]


def test_the_eval_method_records_the_colour_fix_it_runs_with(wavelet_model):
    assert AddSRMethod(wavelet_model, device="cpu").settings["color_fix"] == "wavelet"
    assert AddSRMethod(wavelet_model, color_fix="none", device="cpu").settings["color_fix"] == "none"


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "not valid JSON"),
    ('{"colour_fix": "wavelet"}', "keys among"),
    ('{"color_fix": "sepia"}', "must be one of"),
])
def test_a_bad_file_is_named_with_what_is_wrong(tmp_path, text, message):
    (tmp_path / "inference.json").write_text(text)
    with pytest.raises(ValueError, match=message) as raised:
        InferenceDefaults.from_model_dir(tmp_path)
    assert str(tmp_path / "inference.json") in str(raised.value)
