"""Tiled inference: seconds and peak memory against the input size, the fastest CPU tile, and seams.

Every measurement runs in a child process of its own, so that its peak memory (RSS on a CPU,
``torch.cuda.max_memory_allocated`` on CUDA) is its own. Nothing here is a test; it prints one line per run.

    python benchmarks/tiling.py sizes --sizes 128 256 512 1024            # the shipped model, tile "auto"
    python benchmarks/tiling.py sweep --size 256 --tiles 0 64 96 128 192  # which tile is fastest on this CPU
    python benchmarks/tiling.py seams --image LR.png --tile 64 --figure docs/figures/tiling-seams.png
    python benchmarks/tiling.py sizes --random-sd2 --device cuda --dtype bfloat16 --sizes 128 512 1024

Inputs are an image (``--image``, resized to each size with PIL's bicubic) or, without one, a smooth random field.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from addsr import AddSRPipeline
from addsr.denoiser import latent_factor
from addsr.io import pil_to_tensor, tensor_to_pil
from addsr.pipeline import condition_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_speed import random_sd2_pipeline  # noqa: E402


def lr_input(size: int, image: Path | None) -> torch.Tensor:
    """A ``size`` x ``size`` LR image: ``image`` resized, or a smooth random field."""
    if image is not None:
        with Image.open(image) as source:
            return pil_to_tensor(source.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    coarse = torch.rand(1, 3, size // 8 + 1, size // 8 + 1, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic").clamp(0, 1)


def load(args: argparse.Namespace) -> AddSRPipeline:
    pipe = random_sd2_pipeline() if args.random_sd2 else AddSRPipeline.from_pretrained(args.model)
    pipe = pipe.to(args.device, args.dtype)
    pipe.progress_bar = False
    return pipe


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child(args: argparse.Namespace) -> None:
    """One run: load, upscale one image, print a JSON line with seconds and memory."""
    torch.set_num_threads(args.threads)
    pipe = load(args)
    loaded = peak_memory_gb(pipe.device)
    image = lr_input(args.size, args.image)
    tile = "auto" if args.tile == "auto" else int(args.tile)
    latent_size = tuple(side // latent_factor(pipe.vae) for side in condition_size(args.size, args.size))
    layout = pipe.tile_layout((args.size, args.size), latent_size, tile)
    start = time.perf_counter()
    pipe(image, num_steps=args.steps, tile=tile, generator=torch.Generator().manual_seed(0))
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    print(json.dumps({"size": args.size, "tile": args.tile, "grid": layout.grid, "steps": args.steps,
                      "seconds": time.perf_counter() - start, "peak_gb": peak_memory_gb(pipe.device),
                      "after_loading_gb": loaded}))


def run_child(args: argparse.Namespace, size: int, tile: str) -> dict:
    command = [sys.executable, __file__, "child", "--size", str(size), "--tile", str(tile), "--steps",
               str(args.steps), "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype]
    command += ["--random-sd2"] if args.random_sd2 else []
    command += ["--model", str(args.model)] if args.model else []
    command += ["--image", str(args.image)] if args.image else []
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def report(result: dict) -> None:
    rows, cols = result["grid"]
    print(f"LR {result['size']:>5} px  tile {result['tile']:>4} ({rows} x {cols})  {result['steps']} steps  "
          f"{result['seconds']:8.1f} s  peak {result['peak_gb']:6.2f} GB  (after loading {result['after_loading_gb']:.2f})",
          flush=True)


def seams(args: argparse.Namespace) -> None:
    """Tiled against untiled on one image: PSNR, the largest step at tile transitions over the typical step,
    and a figure of crops across a tile border (untiled | tiled | difference x8)."""
    torch.set_num_threads(args.threads)
    pipe = load(args)
    with Image.open(args.image) as source:
        image = pil_to_tensor(source.convert("RGB"))

    def upscale(tile: int, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return pipe(image, num_steps=args.steps, tile=tile, generator=generator, output_type="pt").images

    untiled, tiled, other_seed = upscale(0), upscale(args.tile), upscale(0, seed=1)
    height, width = image.shape[-2:]
    factor = untiled.shape[-1] // width
    layout = pipe.tile_layout((height, width), (untiled.shape[-2] // factor, untiled.shape[-1] // factor),
                              args.tile)
    scale = untiled.shape[-1] // layout.width
    starts = sorted({box.left for box in layout.boxes})
    psnr = -10 * torch.log10((tiled - untiled).pow(2).mean()).item()
    seed_psnr = -10 * torch.log10((other_seed - untiled).pow(2).mean()).item()
    print(f"{args.image.name}: {layout.grid[0]} x {layout.grid[1]} tiles of {args.tile} LR px; tiled vs untiled "
          f"{psnr:.2f} dB (another seed vs untiled: {seed_psnr:.2f} dB); "
          f"largest step at a tile transition / median step: {seam_ratio(tiled, untiled, layout, scale):.2f}")
    if args.figure:
        border = (starts[1] + layout.tile) // 2 * scale  # the middle of the first overlap
        top = untiled.shape[-2] // 2 - 96
        crops = [x[..., top:top + 192, border - 96:border + 96].clone() for x in (untiled, tiled)]
        difference = ((crops[1] - crops[0]).abs() * 8).clamp(0, 1)
        for crop in (*crops, difference):  # red ticks above and below the border column
            crop[..., :6, 96] = crop[..., -6:, 96] = torch.tensor([1.0, 0.0, 0.0])[:, None]
        row = torch.cat([crops[0], torch.ones_like(crops[0][..., :4]), crops[1],
                         torch.ones_like(crops[0][..., :4]), difference], dim=-1)
        picture = tensor_to_pil(row)[0]
        picture.resize((picture.width * 2, picture.height * 2), Image.Resampling.NEAREST).save(args.figure)
        print(f"figure: {args.figure}")


def seam_ratio(tiled: torch.Tensor, untiled: torch.Tensor, layout, scale: int) -> float:
    """The largest column/row step of ``tiled - untiled`` at a tile transition (edges, and midway between tile
    centres) over the median step anywhere."""
    ratios = []
    for axis, starts in ((-1, sorted({b.left for b in layout.boxes})), (-2, sorted({b.top for b in layout.boxes}))):
        length = layout.width if axis == -1 else layout.height
        lines = set(starts[1:]) | {s + layout.tile for s in starts[:-1]}
        lines |= {(a + b) // 2 + layout.tile // 2 for a, b in zip(starts, starts[1:])}
        lines = {line * scale for line in lines if 0 < line < length}
        if not lines:
            continue
        difference = (tiled - untiled).movedim(axis, -1)
        steps = (difference[..., 1:] - difference[..., :-1]).abs().mean(dim=tuple(range(difference.ndim - 1)))
        ratios.append((steps[[line - 1 for line in sorted(lines)]].max() / steps.median()).item())
    return max(ratios, default=float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["sizes", "sweep", "seams", "child"])
    parser.add_argument("--model", type=Path, help="model folder; default: the shipped small model")
    parser.add_argument("--random-sd2", action="store_true", help="Stable Diffusion 2-sized models, random weights")
    parser.add_argument("--image", type=Path, help="input image (resized per size); default: a random field")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024], help="LR sides (sizes)")
    parser.add_argument("--size", type=int, default=256, help="LR side (sweep, child)")
    parser.add_argument("--tiles", nargs="+", default=["0", "64", "96", "128", "192"], help="tile sides (sweep)")
    parser.add_argument("--tile", default="auto", help="tile side (child, seams)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--figure", type=Path, help="seams: where to save the crops")
    args = parser.parse_args()
    if args.mode == "child":
        child(args)
    elif args.mode == "sizes":
        for size in args.sizes:
            report(run_child(args, size, args.tile))
    elif args.mode == "sweep":
        for tile in args.tiles:
            report(run_child(args, args.size, tile))
    else:
        args.tile = int(args.tile)
        seams(args)


if __name__ == "__main__":
    main()
