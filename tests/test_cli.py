import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from addsr.cli import app

runner = CliRunner()


@pytest.fixture
def model_dir(plain_pipe, tmp_path) -> Path:
    return plain_pipe.save_pretrained(tmp_path / "model")


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.new("RGB", (20, 12), (120, 60, 200)).save(folder / "good.png")
    Image.new("RGB", (9, 15), (10, 160, 20)).save(folder / "small.jpg")
    (folder / "fake.png").write_text("not an image")
    return folder


def test_upscale_folder_with_a_bad_input(model_dir, inputs, tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "missing.webp"
    result = runner.invoke(app, ["upscale", str(inputs), str(missing), "-o", str(out), "--model", str(model_dir),
                                 "--steps", "2", "--seed", "1", "--device", "cpu", "--save-prompt"])
    assert result.exit_code == 1, result.output
    assert f"{inputs / 'fake.png'}: not an image" in result.output
    assert f"{missing}: no such file" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["good.png", "good.txt", "small.png", "small.txt"]
    with Image.open(out / "good.png") as good, Image.open(out / "small.png") as small:
        assert good.size == (80, 48) and small.size == (36, 60)
    assert (out / "good.txt").read_text() == "clean, high-resolution, 8k, extremely detailed, best quality, sharp"


def test_upscale_is_reproducible_and_exits_zero(model_dir, inputs, tmp_path):
    outputs = []
    for name, levels in (("a", "5"), ("b", "5"), ("c", "1")):
        out = tmp_path / name
        result = runner.invoke(app, ["upscale", str(inputs / "good.png"), "-o", str(out), "--model", str(model_dir),
                                     "--steps", "1", "--seed", "3", "--color-fix", "wavelet", "--wavelet-levels",
                                     levels, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        outputs.append((out / "good.png").read_bytes())
    assert outputs[0] == outputs[1] != outputs[2]


def test_clear_errors_for_bad_options(model_dir, inputs, tmp_path, monkeypatch):
    monkeypatch.setattr("addsr.pipeline.DEFAULT_MODEL_DIR", tmp_path / "not-installed")
    result = runner.invoke(app, ["upscale", str(inputs), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "default model is missing" in result.output
    result = runner.invoke(app, ["upscale", str(inputs), "-o", str(tmp_path / "o"), "--model", str(tmp_path)])
    assert result.exit_code == 2 and "has no 'unet/' folder" in result.output
    result = runner.invoke(app, ["upscale", str(inputs), "-o", str(tmp_path / "o"), "--model", str(model_dir),
                                 "--color-fix", "magic"])
    assert result.exit_code == 2 and "adain, wavelet, none" in result.output
    result = runner.invoke(app, ["upscale", str(inputs), "-o", str(tmp_path / "o"), "--model", str(model_dir),
                                 "--color-fix", "wavelet", "--wavelet-levels", "0"])
    assert result.exit_code == 2 and "--wavelet-levels" in result.output


def test_degrade_writes_pairs(tmp_path):
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.new("RGB", (40, 32), (10, 200, 90)).save(hr / "a.png")
    result = runner.invoke(app, ["degrade", str(hr), "-o", str(tmp_path / "pairs"), "--kind", "noise", "--crop", "0"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "pairs" / "lr" / "a.png") as lr, Image.open(tmp_path / "pairs" / "hr" / "a.png") as hr:
        assert lr.size == (10, 8) and hr.size == (40, 32)
    result = runner.invoke(app, ["degrade", str(hr), "-o", str(tmp_path / "p"), "--kind", "fog"])
    assert result.exit_code == 2 and "realesrgan, bicubic" in result.output


def test_eval_runs_baselines_and_names_bad_input(tmp_path):
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.new("RGB", (48, 40), (200, 120, 40)).save(hr / "a.png")
    out = tmp_path / "eval"
    args = ["eval", "--hr", f"tiny={hr}", "-m", "bicubic", "-m", "lanczos", "-o", str(out),
            "--degradations", "bicubic,noise", "--metrics", "psnr,ssim", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 results computed, 0 already done" in result.output
    assert "4 results computed" not in runner.invoke(app, args).output  # resumed: nothing recomputed
    result = runner.invoke(app, ["eval", "--hr", f"tiny={hr}", "-o", str(out), "--metrics", "sharpness"])
    assert result.exit_code == 2 and "Unknown metrics ['sharpness']" in result.output


def test_eval_measures_niqe_with_the_shipped_params_and_names_a_missing_flag_file(tmp_path, monkeypatch):
    monkeypatch.delenv("ADDSR_NIQE_PARAMS", raising=False)
    hr = tmp_path / "hr"
    hr.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(hr / "a.png")
    base = ["eval", "--hr", f"tiny={hr}", "-m", "bicubic", "--degradations", "bicubic", "--device", "cpu"]
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "eval")])  # default metrics: psnr, ssim, niqe
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "eval/per_image/tiny/bicubic/bicubic/a.json").read_text())
    assert list(record["metrics"]) == ["psnr", "ssim", "niqe"]
    assert record["metrics"]["niqe"]["settings"]["params"].endswith("niqe_pris_params.npz")
    missing = tmp_path / "absent.npz"
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "other"), "--niqe-params", str(missing)])
    assert result.exit_code == 2 and "absent.npz" in result.output and "--niqe-params" in result.output


def test_an_image_too_large_for_memory_fails_alone(model_dir, inputs, tmp_path, monkeypatch):
    from addsr import AddSRPipeline

    original = AddSRPipeline.__call__

    def out_of_memory_for_small(self, image, **kwargs):
        if image.size == (9, 15):
            raise torch.OutOfMemoryError("CUDA out of memory")
        return original(self, image, **kwargs)

    monkeypatch.setattr(AddSRPipeline, "__call__", out_of_memory_for_small)
    out = tmp_path / "out"
    result = runner.invoke(app, ["upscale", str(inputs / "small.jpg"), str(inputs / "good.png"), "-o", str(out),
                                 "--model", str(model_dir), "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 1
    assert "small.jpg: 9x15 is too large for cpu's memory" in result.output
    assert [p.name for p in out.iterdir()] == ["good.png"]
