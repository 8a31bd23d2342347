"""A training workspace on disk for the tests of whole runs: a tiny complete model folder (the base and the
teacher), tiny discriminator backbones registered with timm, HR images and a validation image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from typer.testing import CliRunner

from addsr.cli import app
from addsr.training.components import WHOLE_MODELS
from addsr.config import merge_config
from addsr.training.config import DistillationConfig, TeacherTrainingConfig

from conftest import build_pipe
from ram_cases import TINY, random_tiny_model

CROP = 32


@register_model
def addsr_test_vit_features(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A tiny stand-in for DINO ViT-S/16, created by timm name like the real one."""
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=0)


@register_model
def addsr_test_vit_condition(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A tiny stand-in for DINOv2 ViT-S/14."""
    return VisionTransformer(img_size=28, patch_size=14, embed_dim=24, depth=2, num_heads=2, num_classes=0)


@dataclass
class Workspace:
    """Tiny model folders and data on disk, as a real run would have them."""

    root: Path

    @property
    def base(self) -> Path:
        """A complete model folder (SD2 parts, unet/ and controlnet/ with image attention, ram/): base and teacher."""
        return self.root / "base"

    def overrides(self, output_dir: Path, **sections) -> dict:
        """Config values for a fast run on the tiny models; ``sections`` are merged over them."""
        values = {
            "data": {"hr": [str(self.root / "hr")], "crop_size": CROP, "num_workers": 0},
            "optimization": {"batch_size": 2, "mixed_precision": "no", "max_steps": 4, "learning_rate": 1e-4},
            "output": {
                "output_dir": str(output_dir), "checkpoint_every": 2, "keep_last": None, "log_every": 1,
                "validation_every": 0, "validation_images": [str(self.root / "val.png")],
                "validation_sampler": {"process_size": CROP, "num_steps": 2}, "progress_bar": False,
            },
        }
        for name, section in sections.items():
            values[name] = {**values.get(name, {}), **section}
        return values

    def distillation_sections(self) -> dict:
        """The tiny teacher, two teacher samples and a discriminator on tiny ViTs."""
        discriminator = {
            "feature_model": "addsr_test_vit_features", "feature_blocks": [1, 3],
            "feature_checkpoint": str(self.root / "features.safetensors"),
            "condition_model": "addsr_test_vit_condition",
            "condition_checkpoint": str(self.root / "condition.safetensors"),
        }
        return {"model": {"teacher_model": str(self.base)}, "ta_add": {"teacher_samples": 2},
                "discriminator": discriminator}

    def distillation(self, output_dir: Path, **sections) -> DistillationConfig:
        sections = {**self.distillation_sections(), **sections}
        return merge_config(DistillationConfig(), self.overrides(output_dir, **sections))

    def teacher(self, output_dir: Path, **sections) -> TeacherTrainingConfig:
        sections = {"model": {"base_model": str(self.base)}, **sections}
        return merge_config(TeacherTrainingConfig(), self.overrides(output_dir, **sections))


def build_workspace(root: Path) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    build_pipe(tagger=random_tiny_model(), image_dim=TINY.embed_dim).save_pretrained(root / "base")
    torch.manual_seed(5)
    for name, file in (("addsr_test_vit_features", "features"), ("addsr_test_vit_condition", "condition")):
        save_file(timm.create_model(name, pretrained=False).state_dict(), root / f"{file}.safetensors")
    rng = np.random.default_rng(0)
    (root / "hr").mkdir()
    for index in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "hr" / f"{index}.png")
    Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(root / "val.png")
    return Workspace(root)


def assert_upscales(workspace: Workspace, model: Path, out_dir: Path) -> None:
    """``addsr upscale --model model`` upscales the workspace's 10 x 8 LR image x4."""
    result = CliRunner().invoke(app, ["upscale", str(workspace.root / "val.png"), "-o", str(out_dir),
                                      "--model", str(model), "--steps", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with Image.open(out_dir / "val.png") as image:
        assert image.size == (40, 32)


def trainable_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "training_state" / "trainable.safetensors")


def model_weights(folder: Path) -> dict[str, torch.Tensor]:
    """``unet.<name>`` / ``controlnet.<name>`` weights of a model folder."""
    return {f"{part}.{key}": value for part in WHOLE_MODELS
            for key, value in load_file(folder / part / "diffusion_pytorch_model.safetensors").items()}


def selected_by(key: str, patterns) -> bool:
    """Whether ``unet.<name>`` / ``controlnet.<name>`` matches one of the ``model.substring`` patterns."""
    return any(key.startswith(f"{model}.") and part in key for model, part in (p.split(".", 1) for p in patterns))
