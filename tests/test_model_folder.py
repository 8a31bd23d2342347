"""addsr.model_folder: the one set of rules for finding, loading and writing a model folder's parts, as the pipeline
and training both use them."""

from __future__ import annotations

import shutil

import pytest
import torch

from addsr import AddSRPipeline, ColorFix
from addsr.model_folder import (
    COLOR_FIX_FILE,
    base_component_paths,
    load_tagger,
    locate,
    network_paths,
    read_color_fix,
    write_color_fix,
)
from addsr.tagging import RAMTagger

from conftest import build_pipe
from ram_cases import TINY, random_tiny_model


def test_colour_fix_file(tmp_path):
    assert read_color_fix(tmp_path) == ColorFix("adain", 5)
    fix = ColorFix("wavelet", 3)
    assert write_color_fix(tmp_path, fix) == tmp_path / COLOR_FIX_FILE
    assert read_color_fix(tmp_path) == fix and [p.name for p in tmp_path.iterdir()] == [COLOR_FIX_FILE]
    for bad in ("[1]", "{not json", '{"method": "wavelet", "wavelet_levels": 0}', '{"levels": 3}'):
        (tmp_path / COLOR_FIX_FILE).write_text(bad)
        with pytest.raises(ValueError, match="is not a valid colour fix"):
            read_color_fix(tmp_path)


def test_parts_come_from_the_first_folder_that_has_them(tmp_path):
    for folder, parts in (("model", ("unet", "controlnet", "vae")), ("base", ("vae", "text_encoder", "tokenizer",
                                                                              "scheduler"))):
        for part in parts:
            (tmp_path / folder / part).mkdir(parents=True)
    model, base = tmp_path / "model", tmp_path / "base"
    paths = base_component_paths([model, base], "hint")
    assert paths == {"vae": model / "vae", "text_encoder": base / "text_encoder", "tokenizer": base / "tokenizer",
                     "scheduler": base / "scheduler"}
    assert base_component_paths([model, base], "hint", vae_folder=base)["vae"] == base / "vae"
    assert network_paths(model) == {"unet": model / "unet", "controlnet": model / "controlnet"}
    with pytest.raises(FileNotFoundError, match="has no 'unet/' folder"):
        network_paths(base)
    with pytest.raises(FileNotFoundError, match=f"No 'text_encoder/' folder in {model}. Do this."):
        locate("text_encoder", [model], "Do this.")


def test_tagger_rules(tmp_path):
    """A ``ram/`` folder given as ``ram``, else the first ``ram/`` among the folders, else none."""
    first, second = tmp_path / "first", tmp_path / "second"
    random_tiny_model(seed=0).save_pretrained(first / "ram")
    random_tiny_model(seed=1).save_pretrained(second / "ram")
    found = load_tagger([tmp_path / "none", second, first])
    given = load_tagger([first], ram=second / "ram")
    for tagger in (found, given):
        assert isinstance(tagger, RAMTagger) and not tagger.training
        assert torch.equal(tagger.state_dict()["tag_head.classifier.weight"],
                           RAMTagger.from_pretrained(second / "ram").state_dict()["tag_head.classifier.weight"])
    assert load_tagger([tmp_path / "none"]) is None
    with pytest.raises(ValueError, match="merged over RAM"):
        load_tagger([first], dape=tmp_path / "dape.pth")
    with pytest.raises(ValueError, match="tag list"):
        load_tagger([first], ram=tmp_path / "ram_swin_large_14m.pth")


def test_the_pipeline_takes_a_ram_folder_as_training_does(tmp_path):
    build_pipe(tagger=random_tiny_model(), image_dim=TINY.embed_dim).save_pretrained(tmp_path / "model")
    shutil.move(tmp_path / "model" / "ram", tmp_path / "ram")
    with pytest.raises(ValueError, match="needs\\s+a tagger"):
        AddSRPipeline.from_pretrained(tmp_path / "model")
    pipe = AddSRPipeline.from_pretrained(tmp_path / "model", ram=tmp_path / "ram", device="cpu")
    assert isinstance(pipe.tagger, RAMTagger)
