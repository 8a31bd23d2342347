import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from image_cases import QUADRANT_COLORS, write_bad_images, write_good_images
from PIL import Image
from typer.testing import CliRunner

from addsr import AddSRPipeline
from addsr.cli import app
from addsr.io import read_image

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
    monkeypatch.setattr("addsr.model_folder.DEFAULT_MODEL_DIR", tmp_path / "not-installed")
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
        if tuple(image.shape[-2:]) == (15, 9):  # small.jpg, given as a [1, 3, H, W] tensor
            raise torch.OutOfMemoryError("CUDA out of memory")
        return original(self, image, **kwargs)

    monkeypatch.setattr(AddSRPipeline, "__call__", out_of_memory_for_small)
    out = tmp_path / "out"
    result = runner.invoke(app, ["upscale", str(inputs / "small.jpg"), str(inputs / "good.png"), "-o", str(out),
                                 "--model", str(model_dir), "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 1
    assert "small.jpg: 9x15 is too large for cpu's memory" in result.output
    assert [p.name for p in out.iterdir()] == ["good.png"]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def quadrant_means(pixels: np.ndarray) -> list[np.ndarray]:
    height, width = pixels.shape[:2]
    return [pixels[r * height // 2:(r + 1) * height // 2, c * width // 2:(c + 1) * width // 2, :3].mean((0, 1))
            for r in (0, 1) for c in (0, 1)]


def test_one_batch_of_every_kind_of_file(model_dir, tmp_path):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    good = write_good_images(inputs)
    bad = write_bad_images(inputs)
    animated = tmp_path / "animated.gif"  # GIF is read when named, not searched for in folders
    (inputs / "animated.gif").rename(animated)
    result = runner.invoke(app, ["upscale", str(inputs), str(animated), "-o", str(out), "--model", str(model_dir),
                                 "--steps", "1", "--seed", "0", "--device", "cpu", "--color-fix", "wavelet",
                                 "--ext", "same"])
    assert result.exit_code == 1, result.output
    errors = error_lines(result.output)
    assert len(errors) == len(bad)
    for name, reason in bad.items():
        assert sum(line.startswith(f"error: {inputs / name}: {reason}") for line in errors) == 1, result.output
    assert f"warning: {animated}: only the first of its 3 frames was upscaled" in result.output
    assert f"{len(good)} written to {out}, 0 skipped (already there), {len(bad)} failed" in result.output

    expected_names = {name if name != "animated.gif" else "animated.png" for name in good}
    assert {path.name for path in out.iterdir()} == expected_names  # nothing half-written, no temporary file
    for name, kind in good.items():
        output = read_image(out / (name if name != "animated.gif" else "animated.png"))
        assert output.size == (4 * kind.size[0], 4 * kind.size[1]), name
        assert (output.pixels.shape[-1], output.bit_depth, output.icc_profile) == \
            (kind.channels, kind.bits, kind.icc_profile), name
        if kind.bits == 16:
            assert (output.pixels % 257 != 0).any(), name  # the model's float output kept, not 8 bits scaled up
        if kind.channels in (2, 4):  # left half transparent, right half opaque, upscaled
            assert output.pixels[:, :20, -1].max() < 30 and output.pixels[:, 28:, -1].min() > 225, name
        if kind.orientation is not None:
            means = quadrant_means(output.pixels.astype(float))
            nearest = [int(np.argmin([np.abs(mean - color).sum() for color in QUADRANT_COLORS])) for mean in means]
            assert nearest == [0, 1, 2, 3], name  # upright
            exif = Image.open(out / name).getexif()
            assert 0x0112 not in exif and exif[0x010F] == "addsr-test", name


def test_alpha_model_names_tree_skip_and_overwrite(model_dir, tmp_path):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    alpha = np.zeros((8, 10, 1), np.uint8)
    alpha[:, 5:] = 255
    Image.fromarray(np.concatenate([np.full((8, 10, 3), 120, np.uint8), alpha], -1)).save(inputs / "sub" / "a.png")
    Image.new("RGB", (9, 7), (20, 90, 200)).save(inputs / "b.jpg")
    arguments = ["upscale", str(inputs), "-o", str(out), "--model", str(model_dir), "--steps", "1", "--seed", "2",
                 "--device", "cpu", "--color-fix", "wavelet", "--recursive", "--suffix", "_x4", "--ext", "webp",
                 "--alpha", "model", "--quality", "100"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "2 written" in result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["b_x4.webp", "sub", "sub/a_x4.webp"]
    upscaled = read_image(out / "sub" / "a_x4.webp")
    assert upscaled.size == (40, 32) and upscaled.has_alpha
    assert upscaled.pixels[:, :16, 3].mean() < 64 and upscaled.pixels[:, 24:, 3].mean() > 192  # through the model

    before = (out / "b_x4.webp").stat().st_mtime_ns
    result = runner.invoke(app, arguments)  # resumed: everything is there already
    assert result.exit_code == 0 and "0 written to" in result.output and "2 skipped" in result.output
    assert (out / "b_x4.webp").stat().st_mtime_ns == before
    result = runner.invoke(app, [*arguments, "--overwrite"])
    assert result.exit_code == 0 and "2 written" in result.output and (out / "b_x4.webp").stat().st_mtime_ns > before


def test_mistakes_get_one_line_before_the_model_loads(inputs, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(AddSRPipeline, "from_pretrained", no_loading)
    a_file = tmp_path / "taken.png"
    a_file.write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["-o", str(a_file)], f"-o {a_file}: {a_file} is a file, not a folder"),
        (["-o", str(a_file / "sub")], f"{a_file} is a file, not a folder"),
        (["-o", str(tmp_path / "o"), "--device", "tpu"], "unknown device 'tpu'"),
        (["-o", str(tmp_path / "o"), "--ext", "gif"], "ext must be one of png, jpg, webp, tif, same"),
        (["-o", str(tmp_path / "o"), "--alpha", "magic"], "alpha must be one of bicubic, model"),
    ]
    for options, message in cases:
        result = runner.invoke(app, ["upscale", str(inputs), *options])
        assert result.exit_code == 2, result.output
        assert error_lines(result.output) == [f"error: {error_lines(result.output)[0][7:]}"]
        assert message in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["upscale", str(empty), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and error_lines(result.output) == [f"error: no PNG/JPEG/WebP/TIFF images in {empty}"]
    result = runner.invoke(app, ["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and f"error: {tmp_path / 'missing.png'}: no such file" in result.output
    assert not (tmp_path / "o").exists()


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["--debug", "degrade", str(empty), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no PNG/JPEG/WebP/TIFF images" in str(result.exception)
    monkeypatch.setenv("ADDSR_DEBUG", "1")
    result = runner.invoke(app, ["upscale", str(empty), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no PNG/JPEG/WebP/TIFF images" in str(result.exception)
    monkeypatch.delenv("ADDSR_DEBUG")
    result = runner.invoke(app, ["upscale", str(empty), "-o", str(tmp_path / "o")])
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_every_command_names_a_folder_without_images(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for arguments in (["degrade", str(empty), "-o", str(tmp_path / "o")],
                      ["eval", "--hr", f"none={empty}", "-o", str(tmp_path / "e"), "--metrics", "psnr"]):
        result = runner.invoke(app, arguments)
        assert result.exit_code != 0 and len(error_lines(result.output)) == 1, result.output
        assert f"no PNG/JPEG/WebP/TIFF images in {empty}" in result.output


def test_training_with_a_missing_folder_is_one_line_and_leaves_nothing(tmp_path):
    images = tmp_path / "hr"
    images.mkdir()
    Image.new("RGB", (32, 32), (90, 30, 10)).save(images / "a.png")
    run = tmp_path / "run"
    cases = [
        ("vae", [f"data.hr=[{tmp_path / 'no-data'}]"], "no-data does not exist"),
        ("vae", [f"data.hr=[{images}]", f"model.init={tmp_path / 'no-vae'}"], "no-vae"),
        ("vae", [f"data.hr=[{images}]", f"output.validation_images=[{tmp_path / 'no-val'}]"], "no-val not found"),
        ("teacher", [f"data.hr=[{images}]", f"model.base_model={tmp_path / 'no-base'}"], "no-base"),
        ("distill", [f"data.hr=[{images}]", f"model.teacher_model={tmp_path / 'no-teacher'}"], "no-teacher"),
    ]
    for kind, overrides, message in cases:
        overrides = [*overrides, f"output.output_dir={run}"]
        config = tmp_path / f"{kind}.yaml"
        config.write_text(yaml.safe_dump({}))
        result = runner.invoke(app, ["train", kind, str(config), *[x for o in overrides for x in ("--set", o)]])
        assert result.exit_code != 0, result.output
        assert len(error_lines(result.output)) == 1 and message in error_lines(result.output)[0], result.output
        assert not run.exists(), (kind, overrides)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_share_a_batch_and_write_what_one_would(model_dir, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index in range(3):
        Image.new("RGB", (10 + index, 9), (40 * index, 100, 200 - 30 * index)).save(inputs / f"{index}.png")
    (inputs / "broken.png").write_text("not an image")
    options = ["--model", str(model_dir), "--steps", "1", "--seed", "5", "--device", "auto"]
    single = runner.invoke(app, ["upscale", str(inputs), "-o", str(tmp_path / "one"), *options])
    assert single.exit_code == 1, single.output
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "addsr", "upscale", str(inputs),
               "-o", str(tmp_path / "two"), *options]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.count(f"error: {inputs / 'broken.png'}: not an image") == 1, result.stderr[-3000:]
    assert "3 written to" in result.stdout and "1 failed" in result.stdout, result.stdout
    for index in range(3):
        assert (tmp_path / "two" / f"{index}.png").read_bytes() == (tmp_path / "one" / f"{index}.png").read_bytes()
