"""The shipped recipes: configs/distill.yaml and configs/teacher.yaml hold the authors' released settings,
configs/*-paper.yaml the paper's reading; tiny runs of both distillation recipes (tags made once, a resume, a model
folder that upscales); the cached tags, the EMA per micro-step and the memory switches."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from addsr.cli import app
from addsr.config import config_to_dict, merge_config
from addsr.degradations import ops
from addsr.training import DistillationConfig, TeacherTrainingConfig, load_config, train_distill, train_teacher
from addsr.training.components import set_attention
from addsr.training.config import DataConfig, HRSource, TagCacheConfig
from addsr.training.data import TrainingBatchMaker, list_hr_images
from addsr.training.offload import OffloadedTagger
from addsr.training.runner import eight_bit_adamw
from addsr.training.tags import TagCacheError, load_cached_tags, write_tag_cache

from conftest import tiny_controlnet, tiny_text_encoder, tiny_tokenizer, tiny_unet
from training_cases import CROP, Workspace, assert_upscales, build_workspace, trainable_state

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def released(name: str, config_class):
    return load_config(CONFIGS / f"{name}.yaml", config_class)


# -- the shipped configs ------------------------------------------------------------------------------------------


def test_distill_config_is_the_released_recipe():
    """Every setting of the released column of docs/training.md's table, as NJU-PCALab/AddSR's train_addsr.py and its
    README command set it (file:line of that repository's HEAD)."""
    config = released("distill", DistillationConfig)
    weight, ta_add = config.ta_add.weight, config.ta_add
    # p(s) in d(s, t): TA_weight(t_TA[i]), t_TA = the first step's timestep on the two-step path, 1000 (p = 4) on the
    # one-step path -- train_addsr.py:78-89, 1268-1277, 1501-1502; 0.5 * 2.1 ** (s - 1) -- train_addsr.py:88
    assert (weight.p_convention, weight.form, weight.mu, weight.nu) == ("released", "exponential", 0.5, 2.1)
    # PSR condition: x0 = vae.decode(...).clamp(-1, 1) fed as controlnet_cond and to RAM -- train_addsr.py:1365-1385
    assert (ta_add.psr_signed_range, ta_add.psr_weight) == (True, 1.0)
    # teacher re-noising: noise_scheduler.add_noise(z0_stu, noise, i), the student's noise -- train_addsr.py:1414
    assert ta_add.teacher_reuses_student_noise
    # DINOv2 input: model_fea(F.interpolate(controlnet_image, size=518)), [0, 1], not normalised -- train_addsr.py:1448
    assert not config.discriminator.normalize_condition
    # batch: --train_batch_size=2 --gradient_accumulation_steps=2 -- README.md:96-97; train_addsr.py:368, 407
    assert (config.optimization.batch_size, config.optimization.gradient_accumulation_steps) == (2, 2)
    # EMA 0.99, updated every micro-step: ema_unet.update() inside accelerator.accumulate -- train_addsr.py:995, 1513
    assert (config.optimization.ema_decay, config.optimization.ema_update) == (0.99, "micro_step")
    # prompts: plain RAM tags of the USM-sharpened 512 px GT, written once -- utils_data/make_tags.py:52-73,
    # utils_data/make_paired_data.py:105-108; empty for half: --null_text_ratio 0.5 -- README.md:98,
    # dataloaders/paired_dataset.py:80-82
    data = config.data
    assert (data.tag_source, data.tag_cache.tagger.dape, data.prompt_drop_probability) == ("cache", None, 0.5)
    assert data.tag_cache.tagger.ram is not None and data.degradation.sharpen_target
    # data: DIV2K, Flickr2K, the first 20k of LSDIR and the first 10k of FFHQ (the paper's training set)
    firsts = [source.first if isinstance(source, HRSource) else None for source in data.hr]
    assert len(data.hr) == 4 and sorted(firsts, key=str) == [10_000, 20_000, None, None]
    # the rest of the command: lr 2e-5, fp16, 50 000 steps, checkpoints every 5000 -- README.md:93-101;
    # AdamW (0.9, 0.999), weight decay 1e-2, eps 1e-8, clip 1.0 -- train_addsr.py:457-461; 4 teacher samples --
    # train_addsr.py:1407; lambda 0.02 -- train_addsr.py:1504; PSR path for half the batches -- train_addsr.py:1268
    optimization = config.optimization
    assert (optimization.learning_rate, optimization.mixed_precision, optimization.max_steps) == (2e-5, "fp16", 50_000)
    assert (optimization.betas, optimization.weight_decay, optimization.epsilon) == ((0.9, 0.999), 1e-2, 1e-8)
    assert (optimization.max_grad_norm, config.output.checkpoint_every) == (1.0, 5000)
    assert (ta_add.teacher_samples, ta_add.adversarial_weight, ta_add.two_step_probability) == (4, 0.02, 0.5)
    assert (data.crop_size, data.flip, config.model.tagger.dape is not None) == (512, True, True)


def test_teacher_config_is_the_released_recipe():
    """SeeSR's released teacher training: cswry/SeeSR's README command and train_seesr.py (file:line of its HEAD)."""
    config = released("teacher", TeacherTrainingConfig)
    optimization, data = config.optimization, config.data
    # --learning_rate=5e-5 --train_batch_size=2 --gradient_accumulation_steps=2 --null_text_ratio=0.5, fp16,
    # --checkpointing_steps=10000 -- README.md:183-190
    assert (optimization.learning_rate, optimization.batch_size, optimization.gradient_accumulation_steps) == (
        5e-5, 2, 2)
    assert (data.prompt_drop_probability, optimization.mixed_precision, config.output.checkpoint_every) == (
        0.5, "fp16", 10_000)
    # no EMA: train_seesr.py has none
    assert optimization.ema_decay is None
    # prompts: the tag files of utils_data/make_tags.py:56-77 (plain RAM on the sharpened GT crops)
    assert (data.tag_source, data.tag_cache.tagger.dape, data.degradation.sharpen_target) == ("cache", None, True)
    # data: LSDIR + FFHQ10k -- README.md:128
    assert [getattr(source, "first", None) for source in data.hr] == [None, 10_000]
    # trained: the whole ControlNet (controlnet.train(), all its parameters optimised) and the U-Net's
    # image_attentions -- train_seesr.py:749-756, 833; DAPE embeddings -- README.md:181
    assert config.trainable == ("unet.image_attentions", "controlnet") and config.model.tagger.dape is not None


def flat(config) -> dict[str, object]:
    def walk(value, prefix=""):
        if isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, f"{prefix}{key}.")
        else:
            yield prefix.rstrip("."), value

    return dict(walk(config_to_dict(config)))


@pytest.mark.parametrize(("name", "config_class", "expected"), [
    ("distill", DistillationConfig, {
        "ta_add.weight.p_convention", "ta_add.psr_signed_range", "ta_add.teacher_reuses_student_noise",
        "discriminator.normalize_condition", "optimization.batch_size", "optimization.gradient_accumulation_steps",
        "optimization.ema_update", "data.tag_source", "data.tag_cache.file", "data.tag_cache.tagger.ram",
        "data.tag_cache.tagger.tag_list", "data.tag_cache.tagger.tag_thresholds"}),
    ("teacher", TeacherTrainingConfig, {
        "data.tag_source", "data.tag_cache.file", "data.tag_cache.tagger.ram", "data.tag_cache.tagger.tag_list",
        "data.tag_cache.tagger.tag_thresholds"}),
])
def test_paper_configs_differ_from_the_released_ones_only_in_the_listed_settings(name, config_class, expected):
    paper, release = flat(released(f"{name}-paper", config_class)), flat(released(name, config_class))
    assert {key for key in release if paper[key] != release[key]} == expected


# -- tiny runs of both recipes ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("recipes"))


def tiny(workspace: Workspace, name: str, output: Path, **sections) -> DistillationConfig:
    """``configs/<name>.yaml`` shrunk with overrides to the tiny models and data (tags of the tiny RAM)."""
    tagger = {"ram": str(workspace.base / "ram"), "dape": None, "tag_list": None, "tag_thresholds": None}
    base = workspace.distillation_sections()
    sections = {
        **base,
        "model": {**base["model"], "base_model": None, "tagger": tagger},
        "data": {"hr": [{"path": str(workspace.root / "hr"), "first": 4}],
                 "tag_cache": {"file": str(workspace.root / "tags.json"), "tagger": tagger}},
        "optimization": {"max_steps": 2, "ema_decay": 0.5, "learning_rate": 1e-3},
        "output": {"tensorboard": False, "checkpoint_every": 1, "validation_images": []},
        **sections,
    }
    return merge_config(released(name, DistillationConfig), workspace.overrides(output, **sections))


def tag_command(workspace: Workspace, *extra: str) -> list[str]:
    """``addsr train tags configs/distill.yaml`` pointed at the tiny data and RAM."""
    return ["train", "tags", str(CONFIGS / "distill.yaml"), "--device", "cpu",
            "--set", f"data.hr=[{{path: {workspace.root / 'hr'}, first: 4}}]",
            "--set", f"data.tag_cache.file={workspace.root / 'tags.json'}",
            "--set", f"data.tag_cache.tagger.ram={workspace.base / 'ram'}",
            "--set", "data.tag_cache.tagger.tag_list=null", "--set", "data.tag_cache.tagger.tag_thresholds=null",
            "--set", "data.num_workers=0", *extra]


@pytest.fixture(scope="module")
def tag_file(workspace) -> Path:
    result = CliRunner().invoke(app, tag_command(workspace))
    assert result.exit_code == 0, result.output
    return workspace.root / "tags.json"


def test_tags_are_made_once_and_kept(workspace, tag_file):
    cache = json.loads(tag_file.read_text())
    assert sorted(cache["tags"]) == [f"hr/{index}.png" for index in range(4)]  # the first 4, relative to the file
    before = tag_file.read_bytes()
    assert CliRunner().invoke(app, tag_command(workspace)).exit_code == 0
    assert tag_file.read_bytes() == before  # nothing left to tag: the same file
    result = CliRunner().invoke(app, tag_command(workspace, "--set", "data.degradation.sharpen_target=false"))
    assert result.exit_code == 2 and "other settings" in result.output


@pytest.mark.parametrize("name", ["distill", "distill-paper"])
def test_a_tiny_run_of_each_recipe_resumes_and_gives_a_model_folder(workspace, tag_file, tmp_path, caplog, name):
    output = tmp_path / name
    with caplog.at_level(logging.INFO, logger="addsr.training.runner"):
        assert train_distill(tiny(workspace, name, output)) == output / "checkpoints" / "step-000002"
    accumulation = 2 if name == "distill" else 1  # the tiny batch is 2 per device in both
    assert f"Batch: 2 per device x 1 processes x {accumulation} accumulation steps = {2 * accumulation} samples" \
        in caplog.text
    resumed = train_distill(tiny(workspace, name, output, optimization={
        "max_steps": 3, "ema_decay": 0.5, "learning_rate": 1e-3}))
    assert resumed == output / "checkpoints" / "step-000003"
    states = {step: trainable_state(output / "checkpoints" / f"step-{step:06d}") for step in (1, 2, 3)}
    assert any(not torch.equal(states[2][key], states[3][key]) for key in states[3])  # step 3 trained on step 2
    ema = load_file(output / "checkpoints" / "step-000002" / "training_state" / "ema.safetensors")
    before_ema = load_file(output / "checkpoints" / "step-000001" / "training_state" / "ema.safetensors")
    key = next(iter(ema))
    micro = 0.5 * (0.5 * before_ema[key] + 0.5 * states[1][key]) + 0.5 * states[2][key]  # one update per micro-step
    per_step = 0.5 * before_ema[key] + 0.5 * states[2][key]
    expected = micro if name == "distill" else per_step
    assert torch.allclose(ema[key], expected, atol=1e-6) and not torch.allclose(micro, per_step, atol=1e-6)

    assert_upscales(workspace, output / "checkpoints" / "latest", tmp_path / "up")


# -- cached tags ----------------------------------------------------------------------------------------------------


class RecordingTagger:
    """Tags by brightness and records what it was given."""

    input_size = 24

    def __init__(self):
        self.inputs: list[torch.Tensor] = []

    def tags(self, images: torch.Tensor) -> list[str]:
        self.inputs.append(images.clone())
        return ["bright" if image.mean() > 0.5 else "dark" for image in images]


def test_the_cache_holds_the_tags_of_the_sharpened_whole_images(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "hr").mkdir()
    arrays = {"bright": rng.integers(150, 256, (30, 40, 3), dtype=np.uint8),
              "dark": rng.integers(0, 100, (50, 36, 3), dtype=np.uint8)}
    for name, array in arrays.items():
        Image.fromarray(array).save(tmp_path / "hr" / f"{name}.png")
    data = DataConfig(hr=[str(tmp_path / "hr")], num_workers=0,
                      tag_cache=TagCacheConfig(file=str(tmp_path / "tags" / "cache.json"), batch_size=1))
    tagger = RecordingTagger()
    write_tag_cache(data, tagger, torch.device("cpu"), progress=False)
    images = list_hr_images(data.hr)
    assert load_cached_tags(data.tag_cache.file, images) == ["bright", "dark"]
    for recorded, name in zip(tagger.inputs, ("bright", "dark")):
        image = torch.from_numpy(arrays[name]).permute(2, 0, 1)[None].float() / 255
        expected = F.interpolate(ops.usm_sharpen(image), size=(24, 24), mode="bilinear", antialias=True)
        assert torch.allclose(recorded, expected, atol=1e-5)
    Image.fromarray(arrays["dark"]).save(tmp_path / "hr" / "new.png")
    with pytest.raises(TagCacheError, match="1 of 3 HR images have no tags.*new.png.*addsr train tags"):
        load_cached_tags(data.tag_cache.file, list_hr_images(data.hr))


def test_cached_tags_are_the_prompts_of_their_images():
    tokenizer = tiny_tokenizer()
    config = DataConfig(crop_size=CROP, prompt_drop_probability=0.5, tag_source="cache",
                        tag_cache=TagCacheConfig(file="unused.json"))
    maker = TrainingBatchMaker(config, tokenizer, tiny_text_encoder(len(tokenizer)), None, ["a, b", "c"])
    hr = torch.zeros(32, 3, CROP, CROP, dtype=torch.uint8)
    indices = [index % 2 for index in range(32)]
    prompts = maker(hr, torch.Generator().manual_seed(0), indices).prompts
    assert all(prompt in ("", ["a, b,", "c,"][index]) for prompt, index in zip(prompts, indices))
    assert {"", "a, b,", "c,"} <= set(prompts)


# -- memory switches ------------------------------------------------------------------------------------------------


def test_eager_and_sdpa_attention_agree():
    unet, generator = tiny_unet(), torch.Generator().manual_seed(0)
    controlnet = tiny_controlnet(unet)
    inputs = (torch.randn(1, 4, 8, 8, generator=generator), torch.tensor([500]))
    kwargs = {"encoder_hidden_states": torch.randn(1, 3, 32, generator=generator),
              "image_encoder_hidden_states": torch.randn(1, 5, 16, generator=generator)}
    outputs = {}
    for kind in ("sdpa", "eager"):
        set_attention([unet, controlnet], kind)
        with torch.no_grad():
            outputs[kind] = unet(*inputs, **kwargs).sample
    processors = {type(processor).__name__ for processor in controlnet.attn_processors.values()}
    assert processors == {"AttnProcessor"} and torch.allclose(outputs["sdpa"], outputs["eager"], atol=1e-5)


def test_an_offloaded_tagger_answers_as_the_tagger_and_stays_on_the_cpu():
    from conftest import TinyTagger

    tagger, images = TinyTagger(), torch.rand(2, 3, 24, 24)
    offloaded = OffloadedTagger(tagger, torch.device("cpu"))
    assert offloaded.tags(images) == tagger.tags(images) and offloaded.input_size == tagger.input_size
    assert torch.equal(offloaded.embeddings(images), tagger.embeddings(images))
    assert next(tagger.parameters()).device.type == "cpu"


def test_the_8bit_optimiser_is_imported_only_when_asked_for(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
        with pytest.raises(ImportError, match=r"adamw8bit needs bitsandbytes.*addsr\[adamw8bit\]"):
            eight_bit_adamw()


def test_a_teacher_trains_with_the_8bit_optimiser(workspace, tmp_path):
    bitsandbytes = pytest.importorskip("bitsandbytes")
    config = workspace.teacher(tmp_path / "teacher", optimization={"max_steps": 1, "optimizer": "adamw8bit"})
    checkpoint = train_teacher(config)
    state = torch.load(checkpoint / "training_state" / "optimizers.pt", weights_only=True)["optimizers"]["student"]
    assert eight_bit_adamw() is bitsandbytes.optim.AdamW8bit
    moments = [entry["__bnb_optimizer_quant_state__"]["state1"] for entry in state["state"].values()]
    assert any(moment.dtype == torch.uint8 for moment in moments)  # parameters of 4096+ elements: 8-bit moments
