"""Memory and time of full-size TA-ADD distillation steps for each memory switch.

Builds AddSR at Stable Diffusion 2 size with random weights in memory (student and teacher U-Net + ControlNet with
image attentions, SD2's VAE, an OpenCLIP-H-sized text encoder, RAM Swin-L, the DINO / DINOv2 ViT-S discriminator
backbones), runs a few optimiser steps of configs/distill.yaml at 512 px through the real training loop, and
reports per switch setting: the parameter, gradient and optimiser-state budget (counted), the peak memory during
the steps (CUDA's peak allocation on a GPU, the process's peak RSS on a CPU) and the seconds per step. Each setting
runs in its own process so that peaks do not mix.

    python benchmarks/training_memory.py                      # every case, smallest first
    python benchmarks/training_memory.py --cases bf16-ckpt-8bit --steps 3 --teacher-samples 4
    python benchmarks/training_memory.py --cases bf16-ckpt-8bit --no-ema     # what fits 24 GB of host memory

The frozen parts are not written to the output folder (a real run writes them once); validation is off. On a CPU
``offload_frozen`` changes nothing (the frozen models already live in host memory), so no case uses it there.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TAG_COUNT = 4585

CASES: dict[str, dict] = {  # smallest first
    "bf16-ckpt-8bit": {"mixed_precision": "bf16", "gradient_checkpointing": True, "optimizer": "adamw8bit"},
    "bf16-ckpt": {"mixed_precision": "bf16", "gradient_checkpointing": True},
    "bf16-ckpt-8bit-eager": {"mixed_precision": "bf16", "gradient_checkpointing": True, "optimizer": "adamw8bit",
                             "attention": "eager"},
    "bf16-ckpt-8bit-offload": {"mixed_precision": "bf16", "gradient_checkpointing": True, "optimizer": "adamw8bit",
                               "offload_frozen": True},
    "bf16": {"mixed_precision": "bf16"},
    "fp16-ckpt-8bit": {"mixed_precision": "fp16", "gradient_checkpointing": True, "optimizer": "adamw8bit"},
    "fp32": {"mixed_precision": "no"},
}
CPU_CASES = ("bf16-ckpt-8bit", "bf16-ckpt", "bf16-ckpt-8bit-eager", "bf16")
"""Run on a CPU by default: offloading changes nothing there, fp16 autocast is not what CPUs run, and fp32 keeps
every frozen model in float32 (about 14 GiB of parameters before any activation)."""

SD2_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    use_linear_projection=True, use_image_cross_attention=True, image_cross_attention_dim=512,
)
SD2_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
OPEN_CLIP_H_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)


def numel(module: torch.nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def build_models(config):
    """DistillationModels at full size with random weights; the teacher in the frozen dtype from the start."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from addsr.diffusion import SD2_SCHEDULER_CONFIG, NoiseSchedule
    from addsr.models import ControlNet, UNet
    from addsr.models.presets import byte_level_clip_tokenizer
    from addsr.tagging import RAMConfig, RAMTagger
    from addsr.training.components import DistillationModels, FrozenComponents
    from addsr.training.runner import WEIGHT_DTYPES

    class UnsavedComponents(FrozenComponents):
        def save_pretrained(self, folder):  # a real run writes these once; here they would only cost time
            Path(folder).mkdir(parents=True, exist_ok=True)
            return Path(folder)

    dtype = WEIGHT_DTYPES[config.optimization.mixed_precision]
    torch.manual_seed(0)
    unet = UNet(**SD2_UNET)
    controlnet = ControlNet.from_unet(unet)
    teacher_unet = copy.deepcopy(unet).to(dtype)
    teacher_controlnet = copy.deepcopy(controlnet).to(dtype)
    frozen = UnsavedComponents(
        vae=AutoencoderKL(**SD2_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**OPEN_CLIP_H_TEXT)),
        tokenizer=byte_level_clip_tokenizer(77), schedule=NoiseSchedule.from_config(SD2_SCHEDULER_CONFIG),
        tagger=RAMTagger(RAMConfig(), [f"tag{i}" for i in range(TAG_COUNT)]).eval(),
    )
    return DistillationModels(unet, controlnet, teacher_unet.requires_grad_(False),
                              teacher_controlnet.requires_grad_(False), frozen)


def write_inputs(folder: Path) -> dict:
    """Four random 512 px HR images with cached tags, and random discriminator backbone weights."""
    import timm
    from safetensors.torch import save_file

    from addsr.training.tags import FORMAT, cache_key

    rng = np.random.default_rng(0)
    (folder / "hr").mkdir()
    images = []
    for index in range(4):
        images.append(folder / "hr" / f"{index}.png")
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(images[-1])
    tags = folder / "tags.json"
    tags.write_text(json.dumps({"format": FORMAT, "settings": {},
                                "tags": {cache_key(image, tags): "tag1, tag2" for image in images}}))
    checkpoints = {}
    for key, name in (("feature", "vit_small_patch16_224.dino"), ("condition", "vit_small_patch14_dinov2.lvd142m")):
        checkpoints[key] = folder / f"{key}.safetensors"
        save_file(timm.create_model(name, pretrained=False).state_dict(), checkpoints[key])
    return {"hr": [str(folder / "hr")], "tag_file": str(tags), **{k: str(v) for k, v in checkpoints.items()}}


def peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS


def memory(device: torch.device) -> dict[str, float]:
    """Current and peak memory in GiB: CUDA allocations on a GPU, the process's RSS on a CPU."""
    if device.type == "cuda":
        return {"now_gib": torch.cuda.memory_allocated(device) / 2**30,
                "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"now_gib": int(status["VmRSS"].split()[0]) / 2**20, "peak_gib": int(status["VmHWM"].split()[0]) / 2**20}


def run_case(name: str, steps: int, teacher_samples: int, ema: bool = True) -> dict:
    from accelerate.utils import set_seed

    from addsr.training import DistillationConfig, load_config
    from addsr.config import merge_config
    from addsr.training.distill import distillation_run

    with tempfile.TemporaryDirectory() as folder:
        inputs = write_inputs(Path(folder))
        config = merge_config(load_config(ROOT / "configs" / "distill.yaml", DistillationConfig), {
            "data": {"hr": inputs["hr"], "num_workers": 0, "tag_cache": {"file": inputs["tag_file"]}},
            "optimization": {"batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": steps,
                             **({} if ema else {"ema_decay": None}), **CASES[name]},
            "output": {"output_dir": str(Path(folder) / "run"), "tensorboard": False, "progress_bar": False,
                       "validation_every": 0, "validation_images": []},
            "ta_add": {"teacher_samples": teacher_samples},
            "discriminator": {"feature_checkpoint": inputs["feature"], "condition_checkpoint": inputs["condition"]},
        })
        set_seed(0)
        models = build_models(config)
        budget = {
            "student_parameters": numel(models.student_unet) + numel(models.student_controlnet),
            "teacher_parameters": numel(models.teacher_unet) + numel(models.teacher_controlnet),
            "vae_parameters": numel(models.frozen.vae), "text_encoder_parameters": numel(models.frozen.text_encoder),
            "tagger_parameters": numel(models.frozen.tagger),
        }
        run = distillation_run(config, models)
        budget["trainable_parameters"] = sum(p.numel() for p in run.trainable.values())
        budget["discriminator_parameters"] = numel(run.objective.ta_add.discriminator)
        state = run.optimizer.state  # filled on the first step
        peak_memory_reset(run.device)
        setup = memory(run.device)
        seconds = []
        for _ in range(steps):
            started = time.perf_counter()
            run.optimizer_step()
            run.step += 1
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        state_bytes = sum(t.numel() * t.element_size() for entry in state.values() for t in _tensors(entry))
        return {"case": name, "device": str(run.device), "switches": CASES[name], "steps": steps,
                "teacher_samples": teacher_samples, "ema": ema, "seconds_per_step": seconds,
                "memory_after_setup_gib": setup["now_gib"], "peak_during_steps_gib": memory(run.device)["peak_gib"],
                "optimizer_state_gib": state_bytes / 2**30, **budget}


def _tensors(entry):
    for value in entry.values():
        if torch.is_tensor(value):
            yield value
        elif isinstance(value, dict):
            yield from _tensors(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=None,
                        help=f"default: every case on a GPU, {', '.join(CPU_CASES)} on a CPU")
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps per case (batch 1, no accumulation)")
    parser.add_argument("--teacher-samples", type=int, default=1, help="released: 4; fewer only save time")
    parser.add_argument("--no-ema", action="store_true",
                        help="run without the EMA (its float32 copy of the trained weights is then only counted)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON lines here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.steps, args.teacher_samples, not args.no_ema)), flush=True)
        return
    for name in args.cases or (list(CASES) if torch.cuda.is_available() else CPU_CASES):
        command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                   "--teacher-samples", str(args.teacher_samples)] + (["--no-ema"] if args.no_ema else [])
        result = subprocess.run(command, capture_output=True, text=True, env=os.environ)
        if result.returncode != 0:
            print(f"{name}: failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        record = json.loads(result.stdout.strip().splitlines()[-1])
        report(record)
        if args.out is not None:
            with args.out.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def report(record: dict) -> None:
    gib = 2**30
    trainable = record["trainable_parameters"]
    print(f"{record['case']} on {record['device']}: {record['switches']}")
    print(f"  parameters: student {record['student_parameters'] / 1e9:.3f} B (trainable {trainable / 1e6:.1f} M), "
          f"teacher {record['teacher_parameters'] / 1e9:.3f} B, VAE {record['vae_parameters'] / 1e6:.1f} M, "
          f"text encoder {record['text_encoder_parameters'] / 1e6:.1f} M, tagger {record['tagger_parameters'] / 1e6:.1f}"
          f" M, discriminator {record['discriminator_parameters'] / 1e6:.1f} M")
    print(f"  gradients {trainable * 4 / gib:.2f} GiB, optimiser state {record['optimizer_state_gib']:.2f} GiB, "
          f"EMA {trainable * 4 / gib:.2f} GiB{'' if record['ema'] else ' (counted, not allocated: --no-ema)'}")
    seconds = record["seconds_per_step"]
    print(f"  memory after setup {record['memory_after_setup_gib']:.2f} GiB, peak during the steps "
          f"{record['peak_during_steps_gib']:.2f} GiB; seconds per step {', '.join(f'{s:.1f}' for s in seconds)}",
          flush=True)


if __name__ == "__main__":
    main()
