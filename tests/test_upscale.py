import numpy as np
import pytest
from PIL import Image

from addsr.io import ImageFileError, read_image
from addsr.sampling import SamplerSettings
from addsr.upscale import BatchSettings, UpscaleSettings, output_name, plan_batch, upscale_batch, upscale_file

FAST = UpscaleSettings(SamplerSettings(num_steps=1), seed=0)


@pytest.fixture
def rgba(tmp_path):
    pixels = np.zeros((6, 8, 4), np.uint8)
    pixels[..., :3] = 150
    pixels[:, 4:, 3] = 255
    path = tmp_path / "rgba.png"
    Image.fromarray(pixels).save(path)
    return path


def test_upscale_file_keeps_alpha_and_refuses_what_the_target_cannot_hold(plain_pipe, rgba, tmp_path, monkeypatch):
    result = upscale_file(plain_pipe, rgba, tmp_path / "out" / "a.webp", FAST)
    written = read_image(result.target)
    assert result.source == rgba and result.prompt.endswith("sharp") and result.warnings == []
    assert written.size == (32, 24) and written.has_alpha and written.pixels[:, 20:, 3].min() > 225

    def no_pipeline(*args, **kwargs):
        raise AssertionError("the pipeline ran")

    monkeypatch.setattr(type(plain_pipe), "__call__", no_pipeline)
    with pytest.raises(ImageFileError, match="has transparency, which JPEG cannot hold"):
        upscale_file(plain_pipe, rgba, tmp_path / "out" / "a.jpg", FAST)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.webp"]


def test_a_file_that_cannot_be_written_fails_alone(plain_pipe, rgba, tmp_path):
    (tmp_path / "taken").write_text("a file where a folder should be")
    report = upscale_batch(plain_pipe, [(rgba, tmp_path / "taken" / "a.png"), (rgba, tmp_path / "b.png")], FAST,
                           progress=False)
    assert report.written == [tmp_path / "b.png"]
    assert report.failed[0][0] == rgba and report.failed[0][1].startswith(f"cannot write {tmp_path / 'taken'}")


def test_plan_names_outputs_and_finds_collisions_and_existing_files(tmp_path):
    for name in ("a.png", "a.jpg", "b.tif", "c.gif"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_x4.tif").write_bytes(b"done before")
    inputs = [tmp_path, tmp_path / "c.gif", tmp_path / "gone.png"]
    plan = plan_batch(inputs, out, BatchSettings(ext="same", suffix="_x4"))
    assert plan.jobs == [(tmp_path / "a.jpg", out / "a_x4.jpg"), (tmp_path / "a.png", out / "a_x4.png"),
                         (tmp_path / "c.gif", out / "c_x4.png")]
    assert plan.report.skipped == [out / "b_x4.tif"]
    assert plan.report.failed == [(tmp_path / "gone.png", "no such file")]
    same_name = plan_batch([tmp_path], out, BatchSettings(overwrite=True))
    assert [source.name for source, _ in same_name.jobs] == ["a.jpg", "b.tif"]
    collision = f"same output name as {tmp_path / 'a.jpg'}; rename one of them"
    assert same_name.report.failed == [(tmp_path / "a.png", collision)]
    assert output_name(tmp_path / "x.JPEG", BatchSettings(ext="same")) == "x.jpeg"


def test_settings_are_checked_once():
    with pytest.raises(ValueError, match="alpha must be one of bicubic, model"):
        UpscaleSettings(alpha="nearest")
    with pytest.raises(ValueError, match="quality must be 1 to 100"):
        UpscaleSettings(quality=0)
    with pytest.raises(ValueError, match="path separator"):
        BatchSettings(suffix="/x4")
