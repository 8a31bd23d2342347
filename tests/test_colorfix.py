import math

import pytest
import torch

from addsr import colorfix
from addsr.colorfix import (
    ColorFix, adain_color_fix, color_fix, wavelet_blur, wavelet_color_fix, wavelet_decompose,
)


def test_adain_matches_hand_computed_values():
    image = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    reference = torch.tensor([0.5, 0.7, 0.5, 0.7]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    image_std = math.sqrt(0.05 / 3 + 1e-5)  # unbiased variance of 0.1..0.4 around 0.25, plus eps
    reference_std = math.sqrt(0.04 / 3 + 1e-5)  # unbiased variance of 0.5/0.7 around 0.6, plus eps
    expected = [(v - 0.25) / image_std * reference_std + 0.6 for v in (0.1, 0.2, 0.3, 0.4)]
    result = adain_color_fix(image, reference)
    torch.testing.assert_close(result[0, 1].flatten(), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_wavelet_blur_taps_by_hand():
    impulse = torch.zeros(1, 3, 9, 9)
    impulse[..., 4, 4] = 1.0
    blurred = wavelet_blur(impulse, dilation=2)
    expected = torch.zeros(9, 9)
    for dy, wy in ((-2, 1), (0, 2), (2, 1)):
        for dx, wx in ((-2, 1), (0, 2), (2, 1)):
            expected[4 + dy, 4 + dx] = wy * wx / 16
    torch.testing.assert_close(blurred[0, 2], expected)


def test_wavelet_color_fix_in_bands_of_rows_equals_one_pass(monkeypatch):
    torch.manual_seed(0)
    image, reference = torch.rand(2, 3, 90, 23), torch.rand(2, 3, 90, 23)
    whole = {levels: wavelet_color_fix(image, reference, levels) for levels in (1, 3, 5)}
    monkeypatch.setattr(colorfix, "WAVELET_BAND_PIXELS", 7 * 23)  # bands of 7 rows, the last one of 6
    for levels, expected in whole.items():
        assert torch.equal(wavelet_color_fix(image, reference, levels), expected)


def test_wavelet_split_adds_up_and_takes_the_reference_low_frequencies():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 40, 40)
    high, low = wavelet_decompose(image)
    torch.testing.assert_close(high + low, image, rtol=0, atol=1e-6)
    reference = torch.full_like(image, 0.3)  # a constant's low frequencies are the constant itself
    expected = (high + 0.3).clamp(0, 1)
    torch.testing.assert_close(wavelet_color_fix(image, reference), expected, rtol=0, atol=1e-6)


def test_one_wavelet_level_takes_all_but_the_finest_detail_from_the_reference():
    torch.manual_seed(0)
    image, reference = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    expected = (image - wavelet_blur(image, 1) + wavelet_blur(reference, 1)).clamp(0, 1)
    torch.testing.assert_close(wavelet_color_fix(image, reference, levels=1), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(color_fix(image, reference, "wavelet", wavelet_levels=1), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(wavelet_color_fix(image, reference), expected)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="wavelet levels must be a positive integer"):
            wavelet_color_fix(image, reference, levels=bad)


def test_color_fix_dispatch():
    image, reference = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    assert torch.equal(color_fix(image, reference, "none"), image)
    assert torch.equal(color_fix(image, reference, "adain"), adain_color_fix(image, reference))
    with pytest.raises(ValueError, match="adain, wavelet, none"):
        color_fix(image, reference, "histogram")


def test_colour_fix_settings_and_replace():
    fix = ColorFix("wavelet", 3)
    assert fix.settings == {"color_fix": "wavelet", "wavelet_levels": 3}
    assert ColorFix().settings == {"color_fix": "adain"}
    assert fix.replace() == fix and fix.replace(wavelet_levels=2) == ColorFix("wavelet", 2)
    assert fix.replace("adain") == ColorFix("adain", 3)
    image, reference = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    assert torch.equal(fix(image, reference), wavelet_color_fix(image, reference, 3))
    with pytest.raises(ValueError, match="adain, wavelet, none"):
        ColorFix("histogram")
