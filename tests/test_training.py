"""The training runner: configs, data, the teacher and TA-ADD objectives, and whole runs of tiny models on CPU
(checkpoints, resuming after a kill, logging, validation, loading the result for inference)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from accelerate import Accelerator
from diffusers import AutoencoderKL

from addsr import AddSRPipeline
from addsr.cli import app
from addsr.config import ConfigError, config_to_dict, load_config, merge_config
from addsr.training import runner
from addsr.training import DEFAULT_TRAINABLE, ProjectedDiscriminator, TAADDLoss
from addsr.training.checkpoints import TrainingState, list_checkpoints
from addsr.training.components import (
    WHOLE_MODELS,
    load_distillation_models,
    load_teacher_training_models,
    select_trainable,
)
from addsr.training.config import (
    DataConfig,
    DistillationConfig,
    DistillationModelConfig,
    TeacherModelConfig,
    TeacherTrainingConfig,
)
from addsr.training.data import (
    ShardedSampler,
    TrainingBatchMaker,
    list_hr_images,
    random_crop,
)
from addsr.training.distill import DistillationObjective, prepare_discriminator, train_distill
from addsr.training.teacher import TeacherLoss, train_teacher

from conftest import TinyTagger, tiny_text_encoder, tiny_tokenizer
from training_cases import (
    CROP,
    Workspace,
    assert_upscales,
    build_workspace,
    model_weights,
    selected_by,
    trainable_state,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("training"))


def changed_keys(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    assert before.keys() == after.keys()
    return {key for key in before if not torch.equal(before[key], after[key])}


# -- configuration ----------------------------------------------------------------------------------------------


def test_defaults_are_the_papers_values():
    distill = DistillationConfig()
    optimization = distill.optimization
    assert (optimization.learning_rate, optimization.betas, optimization.weight_decay) == (2e-5, (0.9, 0.999), 1e-2)
    assert (optimization.max_grad_norm, optimization.ema_decay, optimization.max_steps) == (1.0, 0.99, 50_000)
    assert (optimization.batch_size, optimization.mixed_precision) == (6, "fp16")
    assert (distill.data.crop_size, distill.data.prompt_drop_probability, distill.data.flip) == (512, 0.5, True)
    assert distill.ta_add.adversarial_weight == 0.02
    assert (distill.ta_add.weight.form, distill.ta_add.weight.mu, distill.ta_add.weight.nu) == ("exponential", 0.5, 2.1)
    assert distill.trainable == DEFAULT_TRAINABLE and distill.discriminator_learning_rate is None
    teacher = TeacherTrainingConfig()
    assert teacher.optimization.learning_rate == 5e-5 and teacher.optimization.ema_decay is None
    assert teacher.trainable == ("unet.image_attentions", "controlnet") and not teacher.train_all


EXAMPLE_PATHS = {"data": ("hr",), "output": ("validation_images",),
                 "discriminator": ("feature_checkpoint", "condition_checkpoint")}


def without_example_paths(config) -> dict:
    values = config_to_dict(config)
    values.pop("model")
    for section, keys in EXAMPLE_PATHS.items():
        for key in keys:
            values.get(section, {}).pop(key, None)
    return values


@pytest.mark.parametrize(
    ("name", "config_class"), [("teacher-paper", TeacherTrainingConfig), ("distill-paper", DistillationConfig)]
)
def test_paper_configs_spell_out_the_defaults(name, config_class):
    """configs/*-paper.yaml spell out the defaults; apart from the example paths they must equal the code's."""
    loaded = load_config(ROOT / "configs" / f"{name}.yaml", config_class)
    assert without_example_paths(loaded) == without_example_paths(config_class())


def test_yaml_toml_and_overrides_give_the_same_config(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "optimization:\n  learning_rate: 1e-4\n  betas: [0.8, 0.99]\n  ema_decay: null\n"
        "ta_add:\n  weight:\n    mu: 0.7\ntrainable: [unet.image_attentions]\n"
    )
    (tmp_path / "run.toml").write_text(
        'trainable = ["unet.image_attentions"]\n[optimization]\nlearning_rate = 1e-4\nbetas = [0.8, 0.99]\n'
        'ema_decay = "none"\n[ta_add.weight]\nmu = 0.7\n'
    )
    from_yaml = load_config(tmp_path / "run.yaml", DistillationConfig)
    from_toml = load_config(tmp_path / "run.toml", DistillationConfig)
    assert from_yaml == from_toml
    assert from_yaml.optimization.learning_rate == 1e-4 and from_yaml.optimization.betas == (0.8, 0.99)
    assert from_yaml.optimization.ema_decay is None and from_yaml.ta_add.weight.mu == 0.7
    assert from_yaml.ta_add.weight.nu == 2.1 and from_yaml.optimization.weight_decay == 1e-2  # others keep defaults
    overridden = load_config(tmp_path / "run.yaml", DistillationConfig,
                             ["optimization.learning_rate=3e-5", "data.crop_size=256", "model.teacher_model=/x"])
    assert overridden.optimization.learning_rate == 3e-5 and overridden.data.crop_size == 256
    assert overridden.model.teacher_model == "/x" and overridden.optimization.betas == (0.8, 0.99)


def test_teacher_sections_keep_their_own_defaults_when_partly_set():
    config = merge_config(TeacherTrainingConfig(), {"optimization": {"batch_size": 4}})
    assert config.optimization.batch_size == 4 and config.optimization.learning_rate == 5e-5


@pytest.mark.parametrize(("text", "message"), [
    ("optimization:\n  lerning_rate: 1e-4\n", "optimization.lerning_rate'; did you mean 'optimization.learning_rate"),
    ("ta_add:\n  weight:\n    rho: 1\n", "unknown key 'ta_add.weight.rho'"),
    ("epochs: 3\n", "unknown key 'epochs'"),
    ("optimization:\n  mixed_precision: fp8\n", "'optimization.mixed_precision' must be one of"),
    ("optimization:\n  batch_size: two\n", "'optimization.batch_size' must be an integer, got 'two'"),
    ("data:\n  crop_size: 100\n", "crop_size must be a positive multiple of 8"),
])
def test_bad_config_errors_name_the_key(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(tmp_path / "bad.yaml", DistillationConfig)


def test_bad_override_is_reported():
    with pytest.raises(ConfigError, match="must look like key.subkey=value"):
        load_config(None, DistillationConfig, ["learning_rate"])


# -- data -------------------------------------------------------------------------------------------------------


def test_hr_images_come_from_folders_and_lists(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    for path in (tmp_path / "a" / "1.png", tmp_path / "a" / "sub" / "2.jpg"):
        Image.new("RGB", (4, 4)).save(path)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "list.txt").write_text("# chosen\na/1.png\n\na/sub/2.jpg\n")
    assert list_hr_images([tmp_path / "a"]) == [tmp_path / "a" / "1.png", tmp_path / "a" / "sub" / "2.jpg"]
    assert list_hr_images([tmp_path / "list.txt"]) == [tmp_path / "a" / "1.png", tmp_path / "a" / "sub" / "2.jpg"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_hr_images([tmp_path / "missing"])


def windows(image: np.ndarray, size: int) -> list[np.ndarray]:
    height, width = image.shape[:2]
    return [image[y: y + size, x: x + size] for y in range(height - size + 1) for x in range(width - size + 1)]


def test_random_crops_are_windows_of_the_image_and_flips_mirror_them():
    image = np.random.default_rng(1).integers(0, 256, (12, 14, 3), dtype=np.uint8)
    plain = windows(image, 8)
    mirrored = [window[:, ::-1] for window in plain]
    kinds = set()
    for seed in range(40):
        crop = random_crop(image, 8, True, torch.Generator().manual_seed(seed)).permute(1, 2, 0).numpy()
        assert crop.shape == (8, 8, 3)
        is_plain = any(np.array_equal(crop, w) for w in plain)
        is_mirrored = any(np.array_equal(crop, w) for w in mirrored)
        assert is_plain or is_mirrored
        kinds.add("plain" if is_plain else "mirrored")
    assert kinds == {"plain", "mirrored"}
    unflipped = [random_crop(image, 8, False, torch.Generator().manual_seed(s)).permute(1, 2, 0).numpy()
                 for s in range(10)]
    assert all(any(np.array_equal(crop, w) for w in plain) for crop in unflipped)


def test_small_images_are_reflect_padded_to_the_crop():
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    crop = random_crop(image, 8, False, torch.Generator().manual_seed(0)).permute(1, 2, 0).numpy()
    assert np.array_equal(crop[:5, :6], image)
    assert np.array_equal(crop[5, :6], image[3]) and np.array_equal(crop[:5, 6], image[:, 4])


def test_processes_get_disjoint_shares_and_a_resumed_sampler_continues_the_sequence():
    def take(sampler, count):
        iterator = iter(sampler)
        return [next(iterator) for _ in range(count)]

    ranks = [take(ShardedSampler(10, seed=3, rank=rank, world_size=2), 10) for rank in (0, 1)]
    for epoch in range(2):
        indices = [index for share in ranks for index, _ in share[epoch * 5: epoch * 5 + 5]]
        assert sorted(indices) == list(range(10))  # each epoch: every image once, split between the processes
    assert [i for i, _ in ranks[0][:5]] != [i for i, _ in ranks[0][5:]]  # epochs are shuffled differently
    seeds = [seed for share in ranks for _, seed in share]
    assert len(set(seeds)) == len(seeds)  # every item crops differently
    assert take(ShardedSampler(10, seed=3, rank=1, world_size=2, start=7), 3) == ranks[1][7:10]
    assert take(ShardedSampler(10, seed=4, rank=1, world_size=2), 10) != ranks[1]


def batch_maker(drop: float, tags_from: str = "hr") -> TrainingBatchMaker:
    tokenizer = tiny_tokenizer()
    config = DataConfig(crop_size=CROP, prompt_drop_probability=drop, tags_from=tags_from)
    return TrainingBatchMaker(config, tokenizer, tiny_text_encoder(len(tokenizer)), TinyTagger())


def test_batches_pair_hr_with_lr_made_on_the_fly():
    hr = torch.randint(0, 256, (3, 3, CROP, CROP), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = batch_maker(0.0)(hr, torch.Generator().manual_seed(0))
    assert batch.hr.shape == batch.lr.shape == (3, 3, CROP, CROP)
    assert 0 <= batch.lr.min() and batch.lr.max() <= 1
    assert not torch.allclose(batch.lr, batch.hr, atol=0.05)
    assert batch.text_embeddings.shape == (3, tiny_tokenizer().model_max_length, 32)
    again = batch_maker(0.0)(hr, torch.Generator().manual_seed(0))
    assert torch.equal(batch.lr, again.lr)  # all draws come from the generator


@pytest.mark.parametrize("tags_from", ["hr", "lr"])
def test_prompts_are_tags_dropped_with_the_configured_probability(tags_from):
    generator = torch.Generator().manual_seed(0)
    bright = torch.randint(190, 256, (32, 3, CROP, CROP), generator=generator)
    hr = torch.cat([bright, bright - 190]).to(torch.uint8)
    kept = batch_maker(0.0, tags_from)(hr, torch.Generator().manual_seed(1)).prompts
    assert kept == ["bright, sky,"] * 32 + ["dark, night,"] * 32
    assert batch_maker(1.0, tags_from)(hr, torch.Generator().manual_seed(1)).prompts == [""] * 64
    half = batch_maker(0.5, tags_from)(hr, torch.Generator().manual_seed(1)).prompts
    assert 16 <= half.count("") <= 48
    assert all(prompt in ("", expected) for prompt, expected in zip(half, kept))


# -- the objectives on a fixed batch -----------------------------------------------------------------------------


def fixed_batch(frozen, seed: int = 0):
    hr = torch.randint(0, 256, (2, 3, CROP, CROP), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    maker = TrainingBatchMaker(DataConfig(crop_size=CROP, prompt_drop_probability=0.0), frozen.tokenizer,
                               frozen.text_encoder, frozen.tagger)
    return maker(hr, torch.Generator().manual_seed(seed))


def test_teacher_steps_lower_the_loss_on_a_fixed_batch(workspace):
    unet, controlnet, frozen = load_teacher_training_models(TeacherModelConfig(base_model=str(workspace.base)))
    parameters = select_trainable(unet, controlnet, TeacherTrainingConfig().trainable)
    loss = TeacherLoss(unet=unet, controlnet=controlnet, vae=frozen.vae, schedule=frozen.schedule,
                       tagger=frozen.tagger)
    batch = fixed_batch(frozen)
    optimizer = torch.optim.AdamW(parameters.values(), lr=1e-3)
    losses = []
    for _ in range(5):
        value = loss(batch.hr, batch.lr, batch.text_embeddings, torch.Generator().manual_seed(0)).loss
        value.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(value.item())
    assert losses[-1] < 0.9 * losses[0]


def test_distillation_steps_lower_the_loss_on_a_fixed_batch(workspace):
    config = workspace.distillation(workspace.root / "unused")
    models = load_distillation_models(config.model)
    parameters = select_trainable(models.student_unet, models.student_controlnet, config.trainable)
    discriminator = prepare_discriminator(ProjectedDiscriminator.from_config(config.discriminator), "cpu",
                                          torch.float32)
    objective = DistillationObjective(TAADDLoss(
        student_unet=models.student_unet, student_controlnet=models.student_controlnet,
        teacher_unet=models.teacher_unet, teacher_controlnet=models.teacher_controlnet, vae=models.frozen.vae,
        discriminator=discriminator, schedule=models.frozen.schedule, tagger=models.frozen.tagger,
        config=config.ta_add,
    ))
    batch = fixed_batch(models.frozen)
    optimizer = torch.optim.AdamW(parameters.values(), lr=1e-3)
    discriminator_optimizer = torch.optim.AdamW(objective.auxiliary.parameters(), lr=1e-3)

    def step_discriminator():
        discriminator_optimizer.step()
        discriminator_optimizer.zero_grad()

    losses = []
    for _ in range(5):
        logs = objective.accumulate(batch, torch.Generator().manual_seed(0), torch.Tensor.backward,
                                    step_discriminator)
        assert all(p.grad is None for p in objective.auxiliary.parameters())  # the generator loss left none
        optimizer.step()
        optimizer.zero_grad()
        losses.append(logs["distillation_loss"])
    assert losses[-1] < 0.9 * losses[0]


def test_whole_models_can_be_trained_and_the_unet_started_from_scratch(workspace):
    config = TeacherModelConfig(base_model=str(workspace.base), from_scratch=True)
    unet, controlnet, _ = load_teacher_training_models(config)
    selected = select_trainable(unet, controlnet, WHOLE_MODELS)
    assert len(selected) == len(list(unet.parameters())) + len(list(controlnet.parameters()))
    base = load_file(workspace.base / "unet" / "diffusion_pytorch_model.safetensors")
    assert base.keys() == unet.state_dict().keys()
    assert not torch.equal(base["conv_in.weight"], unet.state_dict()["conv_in.weight"])
    with pytest.raises(ValueError, match="from_scratch needs train_all"):
        merge_config(TeacherTrainingConfig(), {"model": {"from_scratch": True}})


@pytest.fixture
def init_model(workspace, tmp_path) -> Path:
    """A model folder to continue from: the base's U-Net, ControlNet and VAE."""
    init = tmp_path / "init"
    for name in ("unet", "controlnet", "vae"):
        shutil.copytree(workspace.base / name, init / name)
    return init


def test_frozen_parts_come_from_the_init_model_before_the_base_and_the_log_says_so(workspace, init_model, caplog):
    with caplog.at_level(logging.INFO, logger="addsr.training.components"):
        load_teacher_training_models(TeacherModelConfig(base_model=str(workspace.base), init_model=str(init_model)))
    assert f"vae from {init_model / 'vae'}" in caplog.text
    assert f"text_encoder from {workspace.base / 'text_encoder'}" in caplog.text


def test_vae_model_replaces_the_init_and_base_vae(workspace, init_model, tmp_path, caplog):
    new = tmp_path / "new"
    vae = AutoencoderKL.from_pretrained(workspace.base / "vae")
    vae.register_to_config(scaling_factor=0.5 * vae.config.scaling_factor)
    vae.save_pretrained(new / "vae")
    config = TeacherModelConfig(base_model=str(workspace.base), init_model=str(init_model), vae_model=str(new))
    with caplog.at_level(logging.INFO, logger="addsr.training.components"):
        _, _, frozen = load_teacher_training_models(config)
    assert frozen.vae.config.scaling_factor == vae.config.scaling_factor
    assert f"vae from {new / 'vae'}" in caplog.text


def test_trainable_patterns_that_match_nothing_are_errors(workspace):
    unet, controlnet, _ = load_teacher_training_models(TeacherModelConfig(base_model=str(workspace.base)))
    with pytest.raises(ValueError, match="matches no parameter"):
        select_trainable(unet, controlnet, ["unet.no_such_block"])


# -- whole runs --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def distill_run(workspace) -> Path:
    """Four uninterrupted TA-ADD steps with checkpoints at 2 and 4, validation and TensorBoard logs."""
    output = workspace.root / "distill-a"
    config = workspace.distillation(output, output={"validation_every": 2})
    assert train_distill(config) == output / "checkpoints" / "step-000004"
    return output


def test_distillation_changes_only_the_trainable_modules(workspace, distill_run):
    initial = model_weights(workspace.base)
    checkpoint = distill_run / "checkpoints" / "step-000004"
    trainable = trainable_state(checkpoint)
    exported = model_weights(checkpoint)  # the EMA weights
    assert set(trainable) == {key for key in initial if selected_by(key, DEFAULT_TRAINABLE)}
    raw_changes = {key for key in trainable if not torch.equal(trainable[key], initial[key])}
    assert raw_changes and changed_keys(initial, exported) <= set(trainable)
    for pattern in DEFAULT_TRAINABLE:
        assert any(selected_by(key, [pattern]) for key in raw_changes), pattern


def test_teacher_run_changes_only_the_seesr_modules_and_its_checkpoint_upscales(workspace, tmp_path):
    output = tmp_path / "teacher"
    checkpoint = train_teacher(workspace.teacher(output, optimization={"max_steps": 2}))
    assert checkpoint == output / "checkpoints" / "step-000002"
    initial, trained = model_weights(workspace.base), model_weights(checkpoint)
    changed = changed_keys({k: v for k, v in initial.items() if k.startswith("unet.")},
                           {k: v for k, v in trained.items() if k.startswith("unet.")})
    assert changed and all("image_attentions" in key for key in changed)
    expected = {key for key in trained if key.startswith("controlnet.") or selected_by(key, ["unet.image_attentions"])}
    assert set(trainable_state(checkpoint)) == expected

    assert_upscales(workspace, output / "checkpoints" / "latest", tmp_path / "up")


def test_checkpoint_is_a_complete_model_folder_with_the_ema_weights(distill_run):
    checkpoint = distill_run / "checkpoints" / "latest"
    assert checkpoint.resolve().name == "step-000004"
    pipe = AddSRPipeline.from_pretrained(checkpoint, device="cpu")
    ema = load_file(checkpoint / "training_state" / "ema.safetensors")
    loaded = {f"unet.{k}": v for k, v in pipe.unet.state_dict().items()}
    assert all(torch.equal(loaded[key], value) for key, value in ema.items() if key.startswith("unet."))
    raw = trainable_state(checkpoint)
    assert any(not torch.equal(raw[key], ema[key]) for key in ema)  # the export is the average, not the raw weights
    output = pipe(Image.open(distill_run.parent / "val.png"), num_steps=2, process_size=CROP)
    assert output.images[0].size == (40, 32)


def test_losses_statistics_and_validation_images_are_logged(distill_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(distill_run / "logs"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"loss", "distillation_loss", "adversarial_loss", "discriminator_loss", "d_mean", "d_min", "d_max",
                "grad_norm", "discriminator_grad_norm", "lr", "two_step_fraction"}
    assert {f"train/{name}" for name in expected} <= scalars
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [event.value for event in events.Scalars("train/lr")] == pytest.approx([1e-4] * 4)
    assert events.Tags()["images"] == ["validation/val"]
    for step in (2, 4):
        with Image.open(distill_run / "validation" / f"step-{step:06d}.png") as grid:
            assert grid.size == (80, 32)  # condition | output


class Killed(Exception):
    """Stands in for the process being killed."""


def test_a_run_killed_while_saving_resumes_to_the_uninterrupted_state(workspace, distill_run, monkeypatch):
    output = workspace.root / "distill-b"
    config = workspace.distillation(output)
    save = TrainingState.save

    def save_then_die(self, folder):
        if self.step == 4:
            (folder / "trainable.safetensors").parent.mkdir(parents=True)
            (folder / "trainable.safetensors").write_bytes(b"partial")
            raise Killed
        save(self, folder)

    with monkeypatch.context() as patch:
        patch.setattr(TrainingState, "save", save_then_die)
        with pytest.raises(Killed):
            train_distill(config)
    assert [step for step, _ in list_checkpoints(output)] == [2]
    assert (output / "checkpoints" / "latest").resolve().name == "step-000002"
    (output / "checkpoints" / ".tmp-step-000004-dead").mkdir()  # what a hard kill mid-save leaves

    assert train_distill(config) == output / "checkpoints" / "step-000004"
    assert not (output / "checkpoints" / ".tmp-step-000004-dead").exists()
    resumed = output / "checkpoints" / "step-000004" / "training_state"
    uninterrupted = distill_run / "checkpoints" / "step-000004" / "training_state"
    for name in ("trainable", "ema", "auxiliary"):
        a, b = load_file(resumed / f"{name}.safetensors"), load_file(uninterrupted / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), name
    assert json.loads((resumed / "state.json").read_text())["step"] == 4


def test_loss_scaling_leaves_the_updates_unchanged(workspace, distill_run, monkeypatch):
    """fp16 on a GPU brings a gradient scaler. With a power-of-two scale, fp32 gradients are scaled and unscaled
    exactly, so a run with a scaler must reach the very same weights if the scale is removed before clipping and
    stepping, for the student's and the discriminator's optimiser alike."""

    class ScalingAccelerator(Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    monkeypatch.setattr(runner, "Accelerator", ScalingAccelerator)
    output = workspace.root / "distill-scaled"
    train_distill(workspace.distillation(output))
    for name in ("trainable", "auxiliary"):
        scaled = load_file(output / "checkpoints" / "step-000004" / "training_state" / f"{name}.safetensors")
        plain = load_file(distill_run / "checkpoints" / "step-000004" / "training_state" / f"{name}.safetensors")
        assert all(torch.equal(scaled[key], plain[key]) for key in plain), name
    state = TrainingState.load(output / "checkpoints" / "step-000004" / "training_state")
    assert state.scaler["scale"] == 2.0**12


def test_keep_last_deletes_older_checkpoints_and_a_finished_run_does_nothing(workspace, tmp_path):
    output = tmp_path / "teacher"
    config = workspace.teacher(output, optimization={"max_steps": 3}, output={"checkpoint_every": 1, "keep_last": 2})
    assert train_teacher(config) == output / "checkpoints" / "step-000003"
    assert [step for step, _ in list_checkpoints(output)] == [2, 3]
    before = trainable_state(output / "checkpoints" / "step-000003")
    assert train_teacher(config) == output / "checkpoints" / "step-000003"
    after = trainable_state(output / "checkpoints" / "step-000003")
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_missing_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Set model.teacher_model"):
        load_distillation_models(DistillationModelConfig())


def test_train_commands_run_a_config_file_with_overrides(workspace, tmp_path):
    config = workspace.teacher(tmp_path / "cli-teacher", optimization={"max_steps": 4})
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    result = CliRunner().invoke(app, ["train", "teacher", str(path), "--set", "optimization.max_steps=1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli-teacher" / "checkpoints" / "step-000001" / "unet").is_dir()
    result = CliRunner().invoke(app, ["train", "teacher", str(path), "--set", "optimisation.max_steps=1"])
    assert result.exit_code == 2 and "optimisation" in result.output
