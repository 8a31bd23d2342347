"""How much a model's VAE alone loses: PSNR of its reconstruction (posterior mean) of the evaluation's HR crops, and
of that reconstruction after the wavelet colour fix against the bicubic x4 upscale of the clean LR; with
``--niqe-params``, also the NIQE of the HR crops, of their reconstructions and of the bicubic upscales. Prints one
line per dataset; nothing here is a test.

    python benchmarks/vae_reconstruction.py ../shared/data/val/set5 ../shared/data/val/set14 \
        --niqe-params ../shared/weights/niqe_pris_params.npz

With the shipped default model this gave the VAE numbers of docs/experiments/2026-11-26-continued-vae.md. Crops, LR and
metrics follow `addsr eval`: 512 px centre crops, the paper's bicubic degradation, the Y channel, PSNR with a 4 px
border crop, NIQE with the evaluation's default settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from addsr import DEFAULT_MODEL_DIR
from addsr.colorfix import wavelet_color_fix
from addsr.degradations import paper_degradation
from addsr.evaluation import InterpolationMethod, center_crop
from addsr.io import find_images, load_image, pil_to_tensor, tensor_to_uint8
from addsr.metrics import MetricSettings, MetricSuite, psnr
from addsr.training.vae import reconstruct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path, help="folders of HR images")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="model folder with vae/")
    parser.add_argument("--niqe-params", type=Path, help="NIQE pristine parameters (.npz): also report NIQE")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vae = AutoencoderKL.from_pretrained(args.model / "vae").eval()
    bicubic = InterpolationMethod("bicubic")
    niqe = MetricSuite(["niqe"], MetricSettings(niqe_params_path=args.niqe_params)) if args.niqe_params else None
    for dataset in args.datasets:
        plain, fixed, naturalness = [], [], []
        for path in find_images([dataset]):
            hr = center_crop(pil_to_tensor(load_image(path)), 512, 4)
            upscaled = bicubic.upscale(paper_degradation(hr, "bicubic"), seed=0)
            reconstruction = reconstruct(vae, hr)
            target = tensor_to_uint8(hr)[0]
            plain.append(psnr(tensor_to_uint8(reconstruction)[0], target))
            fixed.append(psnr(tensor_to_uint8(wavelet_color_fix(reconstruction, upscaled))[0], target))
            if niqe is not None:
                images = (hr, reconstruction, upscaled)
                naturalness.append([niqe(tensor_to_uint8(image)[0])[0].value for image in images])
        line = (f"{dataset.name}: {len(plain)} images, VAE reconstruction {np.mean(plain):.2f} dB, "
                f"with the wavelet colour fix {np.mean(fixed):.2f} dB")
        if naturalness:
            hr_niqe, reconstruction_niqe, bicubic_niqe = np.mean(naturalness, axis=0)
            line += (f"; NIQE: HR {hr_niqe:.2f}, VAE reconstruction {reconstruction_niqe:.2f}, "
                     f"bicubic x4 {bicubic_niqe:.2f}")
        print(line)


if __name__ == "__main__":
    main()
