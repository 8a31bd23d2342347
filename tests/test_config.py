"""addsr.config, the one configuration loader: evaluation configs read like training configs, with the same
``--set key.sub=value`` overrides and errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from addsr.cli import app
from addsr.config import ConfigError
from addsr.evaluation import load_config


def test_an_eval_config_takes_shortcuts_then_set_overrides(tmp_path):
    (tmp_path / "eval.toml").write_text('methods = ["bicubic"]\n[datasets]\nset5 = "data/val/set5"\n'
                                        '[metric_settings]\ncrop_border = 4\n')
    config = load_config(tmp_path / "eval.toml", ["seed=3", "metric_settings.crop_border=0",
                                                  "datasets.real={path: data/real, kind: real}"],
                         out_dir=tmp_path / "out", seed=2, datasets={"set14": {"path": "data/val/set14"}})
    assert [(d.name, d.path, d.kind) for d in config.datasets] == [
        ("set5", Path("data/val/set5"), "synthetic"), ("set14", Path("data/val/set14"), "synthetic"),
        ("real", Path("data/real"), "real")]
    assert (config.seed, config.metric_settings.crop_border, config.out_dir) == (3, 0, tmp_path / "out")
    assert config.methods == ["bicubic"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["sead=1"], "unknown key 'sead'; did you mean 'seed'?"),
    (["metric_settings.crop_bordr=1"], "did you mean 'metric_settings.crop_border'?"),
    (["crop_size=big"], "'crop_size' must be an integer"),
    (["datasets.a=[1, 2]"], "dataset 'a': expected a path"),
    (["metrics=[sharpness]"], "Unknown metrics ['sharpness']"),
])
def test_bad_eval_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_eval_command_takes_set(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--set", "datasets.toy=" + str(tmp_path / "missing"),
                                      "--set", "methods=[bicubic]", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "missing does not exist" in result.output
    result = CliRunner().invoke(app, ["eval", "--set", "grid_imagez=0"])
    assert result.exit_code == 2 and "did you mean 'grid_images'" in result.output
