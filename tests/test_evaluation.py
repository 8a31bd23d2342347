"""The evaluation protocol (`addsr.evaluation`): crop rule, deterministic inputs, methods, a full tiny run and resuming."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from addsr.evaluation import (
    AddSRMethod,
    DatasetSpec,
    EvalConfig,
    InterpolationMethod,
    MemoryMeter,
    OutputLayout,
    SpandrelMethod,
    SuperResolutionMethod,
    best_methods,
    center_crop,
    crop_shape,
    evaluate,
    load_config,
    parse_method,
    prepare_samples,
)
from addsr.evaluation.methods import weights_fingerprint
from addsr.metrics import MetricSettings

REPO = Path(__file__).resolve().parents[1]


def smooth_image(height: int, width: int, seed: int) -> Image.Image:
    """A random but natural-ish RGB image: upsampled noise plus a little fine noise."""
    generator = np.random.default_rng(seed)
    coarse = Image.fromarray(generator.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
    noisy = base + generator.normal(0, 6, base.shape)
    return Image.fromarray(noisy.clip(0, 255).round().astype(np.uint8))


@pytest.fixture
def folders(tmp_path):
    """Two HR images of awkward sizes (not multiples of 4, smaller than 512) and one real LR image."""
    hr, real = tmp_path / "hr", tmp_path / "real"
    hr.mkdir()
    real.mkdir()
    smooth_image(203, 218, seed=0).save(hr / "a.png")
    smooth_image(230, 196, seed=1).save(hr / "b.png")
    smooth_image(50, 141, seed=2).save(real / "c.png")
    return hr, real


@pytest.fixture
def niqe_params(tmp_path):
    """A stand-in pristine model with the right keys and shapes (the tests check plumbing, not NIQE values)."""
    path = tmp_path / "niqe_params.npz"
    axis = np.arange(7) - 3
    window = np.exp(-(axis[:, None] ** 2 + axis[None] ** 2) / (2 * (7 / 6) ** 2))
    np.savez(path, mu_pris_param=np.zeros((1, 36)), cov_pris_param=np.eye(36), gaussian_window=window / window.sum())
    return path


def tiny_config(
    folders, out_dir, niqe_params, metrics=("psnr", "niqe"), degradations=("bicubic", "noise_jpeg"), **kwargs
) -> EvalConfig:
    hr, real = folders
    return EvalConfig(
        datasets=[DatasetSpec("toy", hr), DatasetSpec("toyreal", real, "real")],
        out_dir=out_dir, degradations=list(degradations), metrics=list(metrics), device="cpu",
        grid_crop=64, progress=False, metric_settings=MetricSettings(niqe_params_path=niqe_params), **kwargs,
    )


def tiny_esrgan_weights(path: Path, scale: int = 4) -> Path:
    """A 1-block, 8-filter RRDBNet saved as a state dict, which spandrel recognises as ESRGAN."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    torch.save(ESRGAN(num_filters=8, num_blocks=1, scale=scale).state_dict(), path)
    return path


# -- crop rule and inputs ---------------------------------------------------------------------------------------


def test_crop_rule_keeps_512_or_the_largest_multiple_of_the_scale():
    assert crop_shape(600, 700, 512, 4) == (512, 512)
    assert crop_shape(203, 218, 512, 4) == (200, 216)
    assert crop_shape(512, 330, 512, 4) == (512, 328)
    assert crop_shape(61, 50, 128, 1) == (61, 50)


def test_center_crop_takes_the_centred_window():
    image = torch.arange(10 * 13, dtype=torch.float32).reshape(1, 1, 10, 13)
    cropped = center_crop(image, 512, 4)
    assert cropped.shape[-2:] == (8, 12)
    assert torch.equal(cropped, image[..., 1:9, 0:12])
    with pytest.raises(ValueError, match="too small"):
        center_crop(torch.zeros(1, 3, 3, 20), 512, 4)


def test_degraded_inputs_are_deterministic_and_distinct(folders, tmp_path, niqe_params):
    first = prepare_samples(tiny_config(folders, tmp_path / "one", niqe_params), OutputLayout(tmp_path / "one"))
    second = prepare_samples(tiny_config(folders, tmp_path / "two", niqe_params), OutputLayout(tmp_path / "two"))
    arrays = [[np.asarray(Image.open(sample.lr)) for sample in run] for run in (first, second)]
    assert len(arrays[0]) == 2 * 2 + 1
    assert all(np.array_equal(a, b) for a, b in zip(*arrays))
    by_key = {(s.image, s.degradation): np.asarray(Image.open(s.lr)) for s in first}
    assert by_key[("a", "bicubic")].shape == (50, 54, 3)
    assert not np.array_equal(by_key[("a", "bicubic")], by_key[("a", "noise_jpeg")])
    assert np.asarray(Image.open(first[0].hr)).shape == (200, 216, 3)
    real = [s for s in first if s.dataset == "toyreal"]
    assert [(s.degradation, s.hr) for s in real] == [("real", None)]
    assert np.asarray(Image.open(real[0].lr)).shape == (50, 128, 3)


def test_output_folder_of_another_protocol_is_refused(folders, tmp_path, niqe_params):
    config = tiny_config(folders, tmp_path / "out", niqe_params, methods=["bicubic"])
    evaluate(config)
    with pytest.raises(ValueError, match="seed=0, not 1"):
        evaluate(tiny_config(folders, tmp_path / "out", niqe_params, methods=["bicubic"], seed=1))


# -- methods ----------------------------------------------------------------------------------------------------


def test_interpolation_matches_pil():
    lr = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    lr = (lr * 255).round() / 255
    pil = Image.fromarray((lr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    for kind, resample in (("bicubic", Image.Resampling.BICUBIC), ("lanczos", Image.Resampling.LANCZOS)):
        expected = np.asarray(pil.resize((44, 36), resample))
        result = InterpolationMethod(kind).upscale(lr, seed=0)
        assert result.shape == (1, 3, 36, 44)
        assert np.array_equal((result[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), expected)


def test_parse_method_specs(tmp_path):
    assert isinstance(parse_method("bicubic"), InterpolationMethod)
    assert parse_method("lanczos,name=L4").name == "L4"
    model_dir = tmp_path / "addsr-small"
    model_dir.mkdir()
    method = parse_method(f"addsr:{model_dir},steps=1,psr_weight=0.2,color_fix=wavelet", device="cpu")
    assert isinstance(method, AddSRMethod) and method.name == "addsr-small-1step"
    assert (method.sampler.num_steps, method.sampler.psr_weight, method.color_fix.method) == (1, 0.2, "wavelet")
    assert method.settings["wavelet_levels"] == 5
    assert parse_method(f"addsr:{model_dir},color_fix=wavelet,wavelet_levels=3").settings["wavelet_levels"] == 3
    assert "wavelet_levels" not in parse_method(f"addsr:{model_dir}").settings
    bad_specs = ["nearest", "bicubic,steps=2", "bicubic,name=a/b"]
    bad_specs += [f"addsr:{model_dir},{option}" for option in ("steps=two", "steps=5", "color_fix=x", "psr_weight=2",
                                                                 "wavelet_levels=0")]
    for bad in bad_specs:
        with pytest.raises(ValueError):
            parse_method(bad)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        parse_method(f"spandrel:{tmp_path / 'missing.pth'}")


def test_spandrel_method_loads_pth_and_safetensors(tmp_path):
    pytest.importorskip("spandrel")
    from safetensors.torch import save_file

    pth = tiny_esrgan_weights(tmp_path / "tiny.pth")
    safetensors = tmp_path / "tiny.safetensors"
    save_file(torch.load(pth, weights_only=True), safetensors)
    lr = torch.rand(1, 3, 12, 10)
    outputs = []
    for path in (pth, safetensors):
        method = SpandrelMethod(path, device="cpu")
        method.load()
        outputs.append(method.upscale(lr, seed=0))
    assert outputs[0].shape == (1, 3, 48, 40)
    assert torch.equal(outputs[0], outputs[1])
    wrong_scale = SpandrelMethod(tiny_esrgan_weights(tmp_path / "x2.pth", scale=2), device="cpu")
    with pytest.raises(ValueError, match="upscales x2"):
        wrong_scale.load()


def test_missing_spandrel_is_reported_with_the_install_hint(tmp_path, monkeypatch):
    weights = tmp_path / "model.pth"
    torch.save({}, weights)
    monkeypatch.setitem(sys.modules, "spandrel", None)
    with pytest.raises(ImportError, match=r"addsr\[baselines\]"):
        SpandrelMethod(weights, device="cpu").load()


# -- report logic -----------------------------------------------------------------------------------------------


def test_best_method_follows_the_metric_direction_and_printed_precision():
    assert best_methods("psnr", {"a": 30.001, "b": 30.004, "c": 29.0}) == {"a", "b"}
    assert best_methods("ssim", {"a": 0.81, "b": 0.82, "c": None}) == {"b"}
    assert best_methods("niqe", {"a": 5.0, "b": 4.0}) == {"b"}
    assert best_methods("lpips", {"a": 0.2, "b": 0.3}) == {"a"}
    assert best_methods("niqe", {"a": None}) == set()


def test_memory_meter_sees_an_allocation():
    meter = MemoryMeter(torch.device("cpu"))
    if meter.kind == "not_measured":
        pytest.skip("peak resident memory cannot be measured on this system")
    with meter.measure() as measurement:
        block = np.ones(64 * 2**20 // 8)
        block[::512] = 2.0
    assert measurement.peak_bytes >= 48 * 2**20
    assert measurement.seconds > 0


def test_config_file_loads_including_the_shipped_one(tmp_path):
    config = load_config(REPO / "configs" / "eval-baselines.yaml", out_dir=tmp_path)
    assert [d.name for d in config.datasets] == ["set5", "set14"]
    assert config.degradations == ["bicubic", "blur", "noise", "noise_jpeg"]
    assert config.out_dir == tmp_path and config.metric_settings.niqe_params_path.endswith("niqe_pris_params.npz")
    assert parse_method(config.methods[0]).name == "bicubic"
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {a: x}\nsteps: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(bad)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("eval-*.yaml")), ids=lambda path: path.stem)
def test_eval_configs_name_example_paths_inside_the_repository(path, tmp_path):
    config = load_config(path, out_dir=tmp_path)
    files = [dataset.path for dataset in config.datasets] + [Path(config.metric_settings.niqe_params_path)]
    files += [Path(spec.split(",")[0].partition(":")[2]) for spec in config.methods if ":" in spec.split(",")[0]]
    assert all(not file.is_absolute() and ".." not in file.parts for file in files), files
    assert (REPO / config.metric_settings.niqe_params_path).is_file()


# -- a full tiny run --------------------------------------------------------------------------------------------


def test_full_tiny_run_writes_every_output_and_resumes(folders, tmp_path, niqe_params, plain_pipe, monkeypatch):
    model_dir = plain_pipe.save_pretrained(tmp_path / "tiny-addsr")
    methods = ["bicubic", f"addsr:{model_dir},steps=2,process_size=64,name=AddSR-2"]
    if importlib.util.find_spec("spandrel") is not None:
        methods.append(f"spandrel:{tiny_esrgan_weights(tmp_path / 'esrgan.pth')},name=ESRGAN")
    out = tmp_path / "eval"
    run = evaluate(tiny_config(folders, out, niqe_params, methods=methods))
    names = [spec.rpartition("name=")[2] if "name=" in spec else spec for spec in methods]
    groups = [("toy", "bicubic"), ("toy", "noise_jpeg"), ("toyreal", "real")]
    assert (run.computed, run.skipped) == (5 * len(methods), 0)

    layout = OutputLayout(out)
    for dataset, degradation in groups:
        assert Image.open(layout.grid(dataset, degradation)).format == "PNG"
        images = ["c"] if dataset == "toyreal" else ["a", "b"]
        for method in names:
            for image in images:
                lr = Image.open(layout.lr(dataset, degradation, image))
                assert Image.open(layout.sr(dataset, degradation, method, image)).size == (lr.width * 4, lr.height * 4)
                record = json.loads(layout.record(dataset, degradation, method, image).read_text())
                expected_metrics = ["niqe"] if dataset == "toyreal" else ["psnr", "niqe"]
                assert list(record["metrics"]) == expected_metrics
                assert record["metrics"]["niqe"]["settings"]["params"] == str(niqe_params.resolve())
                assert record["seconds"] > 0 and record["method"] == method
    if importlib.util.find_spec("matplotlib") is not None:
        assert Image.open(layout.scatter).format == "PNG"
    else:
        assert not layout.scatter.exists()

    with open(layout.table_csv, newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["dataset", "degradation", "metric", "images", *names]
    assert [row[:3] for row in table[1:6]] == [["toy", "bicubic", "psnr"], ["toy", "bicubic", "niqe"],
                                                ["toy", "noise_jpeg", "psnr"], ["toy", "noise_jpeg", "niqe"],
                                                ["toyreal", "real", "niqe"]]
    psnr_bicubic = np.mean([json.loads(layout.record("toy", "bicubic", "bicubic", i).read_text())
                            ["metrics"]["psnr"]["value"] for i in "ab"])
    assert float(table[1][4]) == pytest.approx(psnr_bicubic)
    markdown = layout.table_markdown.read_text()
    assert f"| Dataset (images) | Degradation | Metric | {' | '.join(names)} |" in markdown
    assert markdown.count("**") >= 2 * 5
    assert ("![perception_distortion](perception_distortion.png)" in markdown) == layout.scatter.exists()
    assert "![toy_noise_jpeg](grids/toy_noise_jpeg.png)" in markdown

    def refuse(*args, **kwargs):
        raise AssertionError("a finished image was run again")

    for cls in (SuperResolutionMethod, InterpolationMethod, AddSRMethod, SpandrelMethod):
        monkeypatch.setattr(cls, "upscale", refuse, raising=False)
        monkeypatch.setattr(cls, "load", refuse, raising=False)
    again = evaluate(tiny_config(folders, out, niqe_params, metrics=("psnr", "ssim", "niqe"), methods=methods))
    assert (again.computed, again.skipped) == (0, 5 * len(methods))
    record = json.loads(layout.record("toy", "noise_jpeg", "AddSR-2", "b").read_text())
    assert list(record["metrics"]) == ["psnr", "niqe", "ssim"]
    assert "SSIM ↑" in layout.table_markdown.read_text()


def test_zero_grid_images_writes_the_report_without_grids(folders, tmp_path, niqe_params):
    config = tiny_config(folders, tmp_path / "out", niqe_params, degradations=["bicubic"], grid_images=0)
    evaluate(config, [InterpolationMethod("bicubic")])
    layout = OutputLayout(config.out_dir)
    assert layout.table_csv.exists() and not layout.grid("toy", "bicubic").exists()
    assert "grids/" not in layout.table_markdown.read_text()
    with pytest.raises(ValueError, match="grid_images must be 0"):
        tiny_config(folders, tmp_path / "out", niqe_params, grid_images=-1)


def test_changed_method_settings_under_the_same_name_are_refused(folders, tmp_path, niqe_params):
    config = tiny_config(folders, tmp_path / "out", niqe_params, degradations=["bicubic"])
    evaluate(config, [InterpolationMethod("bicubic", name="interp")])
    with pytest.raises(ValueError, match="give the method another name"):
        evaluate(config, [InterpolationMethod("lanczos", name="interp")])


def test_weights_fingerprint_follows_the_weights_not_the_training_state(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.parent.mkdir(parents=True)
    (weights.parent / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, weights)
    before = weights_fingerprint(tmp_path / "model")
    (tmp_path / "model" / "training_state").mkdir()
    (tmp_path / "model" / "training_state" / "optimizer.bin").write_bytes(b"state")
    (tmp_path / "model" / "README.md").write_text("notes")
    assert weights_fingerprint(tmp_path / "model") == before
    assert weights_fingerprint(weights) != before
    save_file({"w": torch.ones(2)}, weights)
    assert weights_fingerprint(tmp_path / "model") != before


def test_rerun_with_other_weights_in_the_same_folder_is_refused(folders, tmp_path, niqe_params, plain_pipe):
    from safetensors.torch import load_file, save_file

    model_dir = plain_pipe.save_pretrained(tmp_path / "tiny-addsr")
    config = tiny_config(folders, tmp_path / "out", niqe_params, degradations=["bicubic"],
                         methods=[f"addsr:{model_dir},steps=1,process_size=64,name=tiny"])
    evaluate(config)
    weights = Path(model_dir) / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    save_file({name: tensor + 0.01 for name, tensor in state.items()}, weights)
    with pytest.raises(ValueError, match="give the method another name"):
        evaluate(config)


def test_scatter_needs_psnr_a_perceptual_metric_and_matplotlib(tmp_path, monkeypatch):
    from addsr.evaluation.report import write_scatter

    def record(method, degradation, **values):
        return {"method": method, "degradation": degradation,
                "metrics": {name: {"value": value} for name, value in values.items()}}

    psnr_only = [record("a", "bicubic", psnr=30.0)]
    assert write_scatter(psnr_only, ["a"], tmp_path / "none.png") is None
    both = [record("a", "bicubic", psnr=30.0, niqe=5.0), record("b", "noise", psnr=25.0, niqe=7.0)]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib", None)
        assert write_scatter(both, ["a", "b"], tmp_path / "no_matplotlib.png") is None
    assert not (tmp_path / "no_matplotlib.png").exists()
    pytest.importorskip("matplotlib")
    assert Image.open(write_scatter(both, ["a", "b"], tmp_path / "plot.png")).format == "PNG"
