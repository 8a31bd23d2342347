"""addsr.metrics: PSNR/SSIM/NIQE against independently computed references, and the learned-metric gate.

Reference values were computed once with other libraries (scikit-image 0.26.0, pyiqa 0.1.16, and
basicsr's calculate_niqe as vendored in the AddSR repository) or are published MATLAB values; how,
is in docs/metrics.md.
"""

import importlib
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from addsr.metrics import (
    MetricResult,
    MetricSettings,
    MetricSuite,
    MetricUnavailable,
    compute_metrics,
    learned_metric,
    load_niqe_params,
    niqe,
    psnr,
    rgb_to_y,
    ssim,
)
from addsr.metrics.imresize import imresize
from addsr.metrics.learned import LEARNED_METRICS
from addsr.metrics.niqe import PARAMS_ENV, SHIPPED_PARAMS, fit_aggd

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
NIQE_PARAMS = "weights/niqe_pris_params.npz"


def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared folder), which is absent here")
    return path


def load_val(name: str) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(shared(f"data/val/{name}.png")).convert("RGB"))


def blocky(img: np.ndarray) -> np.ndarray:
    """4x4 box average then nearest x4 back, rounded: the degradation the references were computed on."""
    h, w = img.shape[0] // 4 * 4, img.shape[1] // 4 * 4
    small = img[:h, :w].astype(np.float64).reshape(h // 4, 4, w // 4, 4, 3).mean(axis=(1, 3))
    out = img.copy()
    out[:h, :w] = np.round(small).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    return out


def random_image(seed: int, shape: tuple[int, ...] = (40, 48, 3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(np.cumsum(rng.normal(size=shape), axis=0), axis=1)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return np.clip(smooth * 255 + rng.normal(0, 8, size=shape), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- Y channel


@pytest.mark.parametrize(
    ("rgb", "ycbcr", "yiq"),
    [
        ((0, 0, 0), 16.0, 0.0),
        ((255, 255, 255), 235.0, 255.0),
        ((255, 0, 0), 16.0 + 65.481, 0.299 * 255),
        ((10, 20, 30), 16.0 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255, 0.299 * 10 + 0.587 * 20 + 0.114 * 30),
    ],
)
def test_rgb_to_y_matches_hand_computed_values(rgb, ycbcr, yiq):
    pixel = np.array(rgb, dtype=np.uint8).reshape(1, 1, 3)
    assert rgb_to_y(pixel)[0, 0] == pytest.approx(ycbcr, abs=1e-9)
    assert rgb_to_y(pixel, "yiq")[0, 0] == pytest.approx(yiq, abs=1e-9)


def test_rgb_to_y_rejects_unknown_color_space():
    with pytest.raises(ValueError, match="color_space"):
        rgb_to_y(np.zeros((2, 2, 3), np.uint8), "lab")


# ---------------------------------------------------------------- PSNR / SSIM


def test_identical_images_give_inf_psnr_and_unit_ssim():
    img = random_image(0)
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)


def test_psnr_of_a_uniform_shift_matches_the_formula():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = np.full((16, 16, 3), 110, np.uint8)
    y_diff = 10 * (65.481 + 128.553 + 24.966) / 255  # the shift seen on the Y channel
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / y_diff**2), abs=1e-9)
    assert psnr(a, b, test_y_channel=False) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)


def test_crop_border_ignores_exactly_the_border():
    a = random_image(1)
    b = random_image(2)
    b_border_changed = b.copy()
    b_border_changed[:4] = 0
    b_border_changed[:, -4:] = 255
    for metric in (psnr, ssim):
        assert metric(a, b_border_changed, crop_border=4) == metric(a, b, crop_border=4)
        assert metric(a, b_border_changed, crop_border=0) != metric(a, b, crop_border=0)
        assert metric(a, b, crop_border=3) == metric(a[1:-1, 1:-1], b[1:-1, 1:-1], crop_border=2)


def test_psnr_ssim_reject_bad_inputs():
    a = random_image(3)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:-1])
    with pytest.raises(ValueError, match="crop_border"):
        ssim(a, a, crop_border=20)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, a, crop_border=-1)
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:14, :14], a[:14, :14], crop_border=2)


def test_tensor_inputs_match_uint8_arrays():
    a, b = random_image(4), random_image(5)
    ta = torch.from_numpy(a).permute(2, 0, 1).double() / 255
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].double() / 255
    assert psnr(ta, tb) == pytest.approx(psnr(a, b), abs=1e-9)
    assert ssim(ta, tb) == pytest.approx(ssim(a, b), abs=1e-9)
    assert psnr(ta.float(), tb.float()) == pytest.approx(psnr(a, b), abs=1e-5)  # float32 rounding only
    with pytest.raises(ValueError, match="one image at a time"):
        psnr(tb.repeat(2, 1, 1, 1), tb.repeat(2, 1, 1, 1))


@pytest.mark.parametrize("crop_border", [0, 3])
def test_psnr_ssim_match_scikit_image_on_the_same_y_channel(crop_border):
    skm = pytest.importorskip("skimage.metrics", reason="scikit-image is the independent reference here")
    from skimage.color import rgb2ycbcr

    a, b = random_image(6), random_image(7)
    ya, yb = (rgb2ycbcr(x)[..., 0] for x in (a, b))
    if crop_border:
        ya, yb = (y[crop_border:-crop_border, crop_border:-crop_border] for y in (ya, yb))
    # skimage filters with reflected borders, then averages over the positions 5 pixels in: the
    # same 'valid' positions and Gaussian taps as basicsr, so only rounding differs.
    expected_ssim = skm.structural_similarity(
        ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert psnr(a, b, crop_border) == pytest.approx(skm.peak_signal_noise_ratio(ya, yb, data_range=255), abs=1e-9)
    assert ssim(a, b, crop_border) == pytest.approx(expected_ssim, abs=1e-9)
    rgb_ssim = skm.structural_similarity(
        a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255, channel_axis=2,
    )
    assert ssim(a, b, 0, test_y_channel=False) == pytest.approx(rgb_ssim, abs=1e-9)


# scikit-image 0.26.0 on skimage.color.rgb2ycbcr's Y: (PSNR, SSIM) of blocky(HR) against HR.
SKIMAGE_REFERENCES = {
    ("img_001", 4): (29.27520131240906, 0.8073580155737079),
    ("img_002", 4): (27.591248468787775, 0.7932207849658598),
    ("img_003", 4): (20.11923477628136, 0.6635139500099316),
    ("img_004", 4): (30.35428154768592, 0.7218846954739141),
    ("img_005", 4): (24.386457375574878, 0.7657455967805133),
    ("img_001", 0): (29.335493275279187, 0.809382219769102),
    ("img_003", 0): (20.232217269926593, 0.6612433386830905),
}


@pytest.mark.parametrize(("name", "border"), list(SKIMAGE_REFERENCES))
def test_psnr_ssim_on_set5_match_recorded_scikit_image_values(name, border):
    hr = load_val(f"set5/{name}")
    expected_psnr, expected_ssim = SKIMAGE_REFERENCES[(name, border)]
    assert psnr(blocky(hr), hr, crop_border=border) == pytest.approx(expected_psnr, abs=1e-9)
    assert ssim(blocky(hr), hr, crop_border=border) == pytest.approx(expected_ssim, abs=1e-9)


# ---------------------------------------------------------------- NIQE building blocks


def test_imresize_half_reproduces_a_linear_ramp_inside_the_image():
    ramp = np.tile(np.arange(1, 33, dtype=np.float64), (32, 1))  # value = 1-based column index
    out = imresize(ramp, 0.5)
    assert out.shape == (16, 16)
    # Output column j (1-based) is centred on input coordinate 2j - 0.5; the cubic kernel is exact
    # on linear data away from the mirrored borders.
    expected = 2 * np.arange(1, 17) - 0.5
    np.testing.assert_allclose(out[:, 3:-3], np.tile(expected[3:-3], (16, 1)), atol=1e-12)
    np.testing.assert_allclose(imresize(np.full((10, 14), 7.0), 0.5), 7.0, atol=1e-12)


@pytest.mark.parametrize(("sampler", "alpha"), [("normal", 2.0), ("laplace", 1.0)])
def test_fit_aggd_recovers_the_shape_of_known_distributions(sampler, alpha):
    rng = np.random.default_rng(0)
    sample = getattr(rng, sampler)(0.0, 1.0, size=200_000)
    fitted, beta_l, beta_r = fit_aggd(sample)
    assert fitted == pytest.approx(alpha, abs=0.05)
    assert beta_l == pytest.approx(beta_r, rel=0.02)


def test_niqe_without_the_shipped_params_names_the_env_var_and_env_var_is_read(monkeypatch, tmp_path):
    monkeypatch.delenv(PARAMS_ENV, raising=False)
    monkeypatch.setattr(importlib.import_module("addsr.metrics.niqe"), "SHIPPED_PARAMS", tmp_path / "missing.npz")
    img = np.zeros((192, 192, 3), np.uint8)
    with pytest.raises(FileNotFoundError, match=PARAMS_ENV):
        niqe(img)
    monkeypatch.setenv(PARAMS_ENV, str(tmp_path / "absent.npz"))
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        niqe(img)


def test_shipped_niqe_params_give_the_same_values_as_the_shared_copy(monkeypatch):
    monkeypatch.delenv(PARAMS_ENV, raising=False)
    shipped, reference = load_niqe_params(), load_niqe_params(shared(NIQE_PARAMS))
    assert Path(shipped.path) == SHIPPED_PARAMS.resolve()
    for field in ("mu", "cov", "window"):
        np.testing.assert_array_equal(getattr(shipped, field), getattr(reference, field))
    for name in ("set5/img_003", "set14/img_001"):
        img = load_val(name)
        assert niqe(img) == niqe(img, params_path=shared(NIQE_PARAMS))
    assert MetricSuite(["niqe"])(load_val("set5/img_003"))[0].settings["params"] == str(SHIPPED_PARAMS.resolve())


def test_niqe_needs_two_blocks(monkeypatch):
    monkeypatch.setenv(PARAMS_ENV, str(shared(NIQE_PARAMS)))
    with pytest.raises(ValueError, match="two 96x96 blocks"):
        niqe(random_image(8, (120, 150, 3)))


# ---------------------------------------------------------------- NIQE against references

# Published: MATLAB R2021a niqe on baboon (Set14 img_001), as quoted in basicsr's niqe.py.
MATLAB_BABOON = 5.72957338
# basicsr calculate_niqe (AddSR's vendored copy, float32 like ours); includes images with flat areas.
BASICSR_NIQE = {
    ("set5/img_002", False): 4.362078438448211,
    ("set5/img_004", False): 8.350490648900644,
    ("set5/img_002", True): 11.193633292051297,
    ("set14/img_001", False): 5.729572592446551,
}
# pyiqa 0.1.16 calculate_niqe (torch, float64 with a float32 window), same pristine mean/cov.
PYIQA_NIQE = {
    ("set5/img_001", "ycbcr"): 3.264941995833808,
    ("set5/img_001", "yiq"): 3.212159832237191,
    ("set5/img_003", "ycbcr"): 5.154851677983565,
    ("set5/img_003", "yiq"): 5.140969009246994,
    ("set14/img_001", "ycbcr"): 5.7299651716745545,
    ("set14/img_001", "yiq"): 5.73176733311219,
}


def test_niqe_matches_published_matlab_value_for_baboon():
    assert niqe(load_val("set14/img_001"), params_path=shared(NIQE_PARAMS)) == pytest.approx(MATLAB_BABOON, abs=1e-4)


@pytest.mark.parametrize(("name", "degrade"), list(BASICSR_NIQE))
def test_niqe_matches_basicsr(name, degrade):
    img = load_val(name)
    img = blocky(img) if degrade else img
    # Same definition and precision; float32 sums in another order differ by ~1e-5.
    expected = BASICSR_NIQE[(name, degrade)]
    assert niqe(img, params_path=shared(NIQE_PARAMS)) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("name", "color_space"), list(PYIQA_NIQE))
def test_niqe_matches_pyiqa_on_natural_images(name, color_space):
    # pyiqa computes in float64 with a float32-rounded window; on natural images without flat areas
    # that moves NIQE by < 0.007 (flat areas make the MSCN fit precision-sensitive: see docs).
    value = niqe(load_val(name), params_path=shared(NIQE_PARAMS), color_space=color_space)
    assert value == pytest.approx(PYIQA_NIQE[(name, color_space)], abs=1e-2)


def test_niqe_crop_border_and_tensor_input(monkeypatch):
    monkeypatch.setenv(PARAMS_ENV, str(shared(NIQE_PARAMS)))
    hr = load_val("set5/img_003")
    tensor = torch.from_numpy(hr).permute(2, 0, 1).double() / 255
    assert niqe(tensor) == pytest.approx(niqe(hr), abs=1e-9)
    assert niqe(hr, crop_border=8) == pytest.approx(niqe(hr[8:-8, 8:-8]), abs=1e-12)
    assert niqe(hr, crop_border=8) != niqe(hr)


# ---------------------------------------------------------------- registry and results


def test_compute_metrics_records_implementation_and_settings():
    a, b = random_image(9), random_image(10)
    settings = MetricSettings(crop_border=2, color_space="yiq")
    results = compute_metrics(["ssim", "psnr"], a, b, settings)
    assert [r.name for r in results] == ["ssim", "psnr"]
    assert results[0].value == ssim(a, b, 2, True, "yiq")
    assert results[1].value == psnr(a, b, 2, True, "yiq")
    assert results[1].settings == {"crop_border": 2, "test_y_channel": True, "color_space": "yiq"}
    assert "addsr.metrics.psnr" in results[1].implementation
    assert "crop_border=2" in results[1].describe()
    assert MetricResult(**results[1].to_dict()) == results[1]


def test_metric_suite_niqe_and_errors(monkeypatch, tmp_path):
    params = shared(NIQE_PARAMS)
    suite = MetricSuite(["niqe", "psnr"], MetricSettings(niqe_params_path=params))
    assert suite.needs_reference
    hr = load_val("set5/img_003")
    niqe_result, psnr_result = suite(blocky(hr), hr)
    assert niqe_result.value == niqe(blocky(hr), params_path=params)
    assert niqe_result.settings["params"] == str(params.resolve())
    assert psnr_result.value == psnr(blocky(hr), hr)
    with pytest.raises(ValueError, match="reference"):
        suite(hr)
    with pytest.raises(KeyError, match="unknown metric"):
        MetricSuite(["psnr", "fid"])
    monkeypatch.delenv(PARAMS_ENV, raising=False)
    monkeypatch.setattr(importlib.import_module("addsr.metrics.niqe"), "SHIPPED_PARAMS", tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=PARAMS_ENV):
        MetricSuite(["niqe"])


# ---------------------------------------------------------------- learned metrics


def test_learned_metric_without_pyiqa_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # makes `import pyiqa` fail
    with pytest.raises(MetricUnavailable, match=r"pip install 'addsr\[iqa\]'"):
        learned_metric("lpips")
    with pytest.raises(MetricUnavailable, match="pyiqa"):
        compute_metrics(["musiq"], random_image(11))


class FakePyiqaMetric(torch.nn.Module):
    def forward(self, img, ref=None):
        return (img - (0 if ref is None else ref)).abs().mean().reshape(1, 1)


def install_fake_pyiqa(monkeypatch, create_metric):
    """A stand-in pyiqa package: the real one needs weights that tests cannot have."""
    pyiqa = types.ModuleType("pyiqa")
    pyiqa.__version__ = "0.0-fake"
    pyiqa.create_metric = create_metric
    utils = types.ModuleType("pyiqa.utils")
    download_util = types.ModuleType("pyiqa.utils.download_util")
    download_util.DEFAULT_CACHE_DIR = "/nonexistent"
    download_util.download_url_to_file = lambda *args, **kwargs: None
    for name, module in (("pyiqa", pyiqa), ("pyiqa.utils", utils), ("pyiqa.utils.download_util", download_util)):
        monkeypatch.setitem(sys.modules, name, module)
    return download_util


def place_weights(folder: Path, name: str) -> None:
    for relative in LEARNED_METRICS[name].weight_files:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(b"")


def test_learned_metric_names_missing_weight_files(monkeypatch, tmp_path):
    install_fake_pyiqa(monkeypatch, lambda *args, **kwargs: pytest.fail("must not build without weights"))
    with pytest.raises(MetricUnavailable, match="alexnet-owt-7be5be79.pth") as err:
        learned_metric("lpips", weights=tmp_path)
    assert str(tmp_path / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth") in str(err.value)
    monkeypatch.setenv("ADDSR_IQA_WEIGHTS", str(tmp_path / "elsewhere"))
    with pytest.raises(MetricUnavailable, match="elsewhere"):
        learned_metric("dists")


def test_learned_metric_refuses_downloads_while_building(monkeypatch, tmp_path):
    def create_metric(name, device=None, **kwargs):
        torch.hub.download_url_to_file("https://example.invalid/w.pth", str(tmp_path / "w.pth"))

    install_fake_pyiqa(monkeypatch, create_metric)
    place_weights(tmp_path, "lpips")
    previous_hub = torch.hub.get_dir()
    with pytest.raises(MetricUnavailable, match="refusing to download https://example.invalid/w.pth"):
        learned_metric("lpips", weights=tmp_path)
    assert torch.hub.get_dir() == previous_hub
    assert not (tmp_path / "w.pth").exists()


def test_learned_metric_builds_from_local_weights_and_reports_provenance(monkeypatch, tmp_path):
    seen = {}

    def create_metric(name, device=None, **kwargs):
        download_util = sys.modules["pyiqa.utils.download_util"]
        seen.update(name=name, hub=torch.hub.get_dir(), cache=download_util.DEFAULT_CACHE_DIR)
        return FakePyiqaMetric()

    install_fake_pyiqa(monkeypatch, create_metric)
    place_weights(tmp_path, "lpips")
    metric = learned_metric("lpips", weights=tmp_path)
    assert seen == {"name": "lpips", "hub": str(tmp_path), "cache": str(tmp_path / "pyiqa")}
    assert sys.modules["pyiqa.utils.download_util"].DEFAULT_CACHE_DIR == "/nonexistent"

    a, b = random_image(12), random_image(13)
    result = metric(a, b)
    expected = np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 255
    assert result.value == pytest.approx(expected, abs=1e-6)
    assert result.implementation == "pyiqa 0.0-fake (lpips)"
    assert result.settings == {"weights_dir": str(tmp_path), "device": "cpu"}
    with pytest.raises(ValueError, match="full-reference"):
        metric(a)
