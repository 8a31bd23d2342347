"""How much a teacher uses its LR condition: PSNR of its one-step x0 prediction from a noised HR latent, with the
LR condition and with a blank one, at several timesteps. Prints one line per timestep; nothing here is a test.

    python benchmarks/teacher_conditioning.py runs/small/teacher/checkpoints/latest

The tables of docs/experiments/2026-11-26-teacher-conditioning.md came from this on the saved checkpoints
(Set5 img_001, the 128 px crop at rows and columns 128-256, bicubic degradation, seed 0, one thread).
"""

from __future__ import annotations

import argparse

import torch

from addsr import AddSRPipeline
from addsr.denoiser import decode_latents, encode_images, predict_noise
from addsr.degradations import paper_degradation
from addsr.io import load_image, pil_to_tensor
from addsr.metrics import psnr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="teacher (or any model) folder")
    parser.add_argument("--image", default="../shared/data/val/set5/img_001.png")
    parser.add_argument("--box", type=int, nargs=4, default=[128, 256, 128, 256], help="top bottom left right")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[50, 249, 499, 749, 999])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = AddSRPipeline.from_pretrained(args.model, device="cpu", dtype="float32")
    top, bottom, left, right = args.box
    hr = pil_to_tensor(load_image(args.image))[:, :, top:bottom, left:right]
    condition = torch.nn.functional.interpolate(paper_degradation(hr, "bicubic"), scale_factor=4, mode="bicubic")
    conditions = {"LR": condition.clamp(0, 1), "blank": torch.zeros_like(condition)}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = encode_images(pipe.vae, hr, generator)
        text = pipe.encode_prompts([""])
        reconstruction = decode_latents(pipe.vae, latents)
        print(f"VAE reconstruction {psnr(reconstruction, hr):.2f} dB")
        for timestep in args.timesteps:
            noisy = pipe.schedule.add_noise(latents, torch.randn(latents.shape, generator=generator), timestep)
            scores = []
            for name, image in conditions.items():
                noise = predict_noise(pipe.unet, pipe.controlnet, noisy, timestep, text, image, None)
                x0 = decode_latents(pipe.vae, pipe.schedule.predict_x0(noisy, noise, timestep))
                scores.append(f"{name} {psnr(x0, hr):.2f} dB")
            print(f"t = {timestep}: x0 PSNR " + ", ".join(scores))


if __name__ == "__main__":
    main()
