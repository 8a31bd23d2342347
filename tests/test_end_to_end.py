"""From released-layout parts to upscaled files: assemble, then `addsr upscale --model` with nothing else."""

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from addsr import AddSRPipeline
from addsr.assemble import assemble_model
from addsr.cli import app
from addsr.io import load_image

from conftest import build_pipe
from ram_cases import TINY, random_tiny_model, write_files


def test_assembled_folder_upscales_from_the_command_line_alone(tmp_path):
    tagger = random_tiny_model()
    pipe = build_pipe(tagger=tagger, image_dim=TINY.embed_dim)
    pipe.save_pretrained(tmp_path / "sd2-base")
    pipe.unet.save_pretrained(tmp_path / "addsr" / "unet")
    pipe.controlnet.save_pretrained(tmp_path / "addsr" / "controlnet")
    ram = write_files(tmp_path, tagger)
    model = assemble_model(tmp_path / "sd2-base", tmp_path / "addsr", ram["ram"], None, ram["tags"],
                           ram["thresholds"], tmp_path / "assembled", ram_config=TINY)
    Image.new("RGB", (18, 14), (90, 140, 200)).save(tmp_path / "lr.png")

    result = CliRunner().invoke(app, ["upscale", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"),
                                      "--model", str(model), "--steps", "2", "--seed", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output

    loaded = AddSRPipeline.from_pretrained(model, device="cpu")
    expected = pipe(load_image(tmp_path / "lr.png"), num_steps=2, generator=torch.Generator().manual_seed(4))
    assert type(loaded.tagger).__name__ == "RAMTagger"
    with Image.open(tmp_path / "out" / "lr.png") as written:
        assert written.size == (72, 56)
        assert np.array_equal(np.asarray(written), np.asarray(expected.images[0]))


def test_assemble_command_lists_every_problem(tmp_path):
    result = CliRunner().invoke(app, ["assemble", "--base", str(tmp_path / "nothing"), "--model",
                                      str(tmp_path / "none"), "--ram", str(tmp_path / "ram.pth"),
                                      "--tag-list", str(tmp_path / "tags.txt"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "Stable Diffusion 2 base folder" in result.output and "AddSR or SeeSR model folder" in result.output
    assert "RAM" in result.output and not (tmp_path / "out").exists()
