"""Seconds per image and peak memory of AddSRPipeline, and how far a half-precision run lands from float32.

By default it times the shipped small model, with ``--model DIR`` another model folder; ``--random-sd2`` builds
Stable Diffusion 2 base-sized U-Net, ControlNet, VAE, text encoder and a Swin-L RAM tagger with random weights (no
files needed), which gives the cost of the released architecture. Prints one line per setting; nothing here is a test.

    python benchmarks/pipeline_speed.py --random-sd2 --device cuda --dtype float16 --compare-float32
    python benchmarks/pipeline_speed.py --device cpu --size 128 --steps 1 4 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel

from addsr import AddSRPipeline
from addsr.models import ControlNet, UNet
from addsr.models.presets import byte_level_clip_tokenizer
from addsr.tagging import RAMConfig, RAMTagger

SD2_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    use_image_cross_attention=True,
)
SD2_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768,
)
SD2_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)


def random_sd2_pipeline() -> AddSRPipeline:
    torch.manual_seed(0)
    unet = UNet(**SD2_UNET)
    tagger = RAMTagger(RAMConfig(), tag_list=[f"tag{i}" for i in range(RAMConfig().num_classes)])
    return AddSRPipeline(
        unet=unet, controlnet=ControlNet.from_unet(unet), vae=AutoencoderKL(**SD2_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD2_TEXT)), tokenizer=byte_level_clip_tokenizer(77), tagger=tagger,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_run(pipe: AddSRPipeline, image: torch.Tensor, steps: int, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of ``repeats`` runs after one warm-up, and the last output."""
    times = []
    for _ in range(repeats + 1):
        synchronize(pipe.device)
        start = time.perf_counter()
        output = pipe(image, num_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt").images
        synchronize(pipe.device)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2], output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model folder (unet/, controlnet/, ... ram/); default: the shipped model")
    source.add_argument("--random-sd2", action="store_true", help="SD2-base-sized models with random weights")
    parser.add_argument("--base-model", help="SD2 base folder for parts --model lacks")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", type=int, default=128, help="LR side in pixels (output is 4x)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-float32", action="store_true", help="also run float32 and report the difference")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.random_sd2:
        pipe = random_sd2_pipeline().to(args.device, args.dtype)
    else:
        pipe = AddSRPipeline.from_pretrained(args.model, base_model_dir=args.base_model, device=args.device,
                                             dtype=args.dtype)
    pipe.progress_bar = False
    image = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    print(f"device {pipe.device} ({torch.cuda.get_device_name() if pipe.device.type == 'cuda' else 'cpu'}), "
          f"dtype {pipe.dtype}, LR {args.size}x{args.size} -> {4 * args.size}x{4 * args.size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    outputs = {}
    for steps in args.steps:
        if pipe.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds, outputs[steps] = time_run(pipe, image, steps, args.repeats)
        peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if pipe.device.type == "cuda" else ""
        print(f"{steps} step(s): {seconds:.3f} s/image (median of {args.repeats}){peak}")
    if args.compare_float32 and pipe.dtype != torch.float32:
        pipe.to(pipe.device, torch.float32)
        for steps in args.steps:
            reference = pipe(image, num_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt").images
            difference = (outputs[steps] - reference).abs()
            print(f"{steps} step(s) vs float32: max |diff| {difference.max():.4f}, mean {difference.mean():.5f} "
                  f"(images in [0, 1])")


if __name__ == "__main__":
    main()
