"""What the output-changing speed options cost under the evaluation protocol: an AddSR model as it is, with a small
PSR decoder (``--psr-decoder``), in bfloat16, and both, scored by ``addsr.evaluation`` (PSNR, SSIM, NIQE, seconds
per image) on an evaluation config's data and degradations (default ``configs/eval-small.yaml``: Set5 + Set14 under
the paper's four degradations), then each option's outputs against the float32 full-decoder outputs (PSNR, SSIM).

The methods are ``addsr.evaluation.AddSRMethod`` with the decoder set after loading; ``addsr eval`` has no option
for it. Runs are resumable, like ``addsr eval``; figures go to docs/performance.md.

    python benchmarks/speed_options_quality.py --psr-decoder runs/small/psr-decoder/decoder \\
        --set5 ../shared/data/val/set5 --set14 ../shared/data/val/set14 -o runs/speed-options
    python benchmarks/speed_options_quality.py --psr-decoder runs/small/psr-decoder/decoder \\
        --set5 ../shared/data/val/set5 --datasets set5 --methods float32 float32+psr-decoder -o runs/speed-set5
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from addsr.evaluation import evaluate, load_config
from addsr.evaluation.layout import OutputLayout
from addsr.evaluation.methods import AddSRMethod, weights_fingerprint
from addsr.io import load_image
from addsr.metrics import psnr, ssim
from addsr.sampling import SamplerSettings

REFERENCE = "float32"
METHODS = ("float32", "float32+psr-decoder", "bfloat16", "bfloat16+psr-decoder")


class PSRDecoderMethod(AddSRMethod):
    """An AddSR model whose PSR conditions are decoded by a small decoder (``AddSRPipeline.use_psr_decoder``)."""

    def __init__(self, psr_decoder: Path, **kwargs: Any):
        super().__init__(**kwargs)
        self.psr_decoder = Path(psr_decoder).resolve()

    @property
    def settings(self) -> dict[str, Any]:
        return {**super().settings, "psr_decoder": str(self.psr_decoder),
                "psr_decoder_sha256": weights_fingerprint(self.psr_decoder)}

    def load(self) -> None:
        super().load()
        self._pipe.use_psr_decoder(self.psr_decoder)


def method(name: str, psr_decoder: Path, **common: Any) -> AddSRMethod:
    dtype, _, option = name.partition("+")
    if option:
        return PSRDecoderMethod(psr_decoder, name=name, dtype=dtype, **common)
    return AddSRMethod(name=name, dtype=dtype, **common)


def against_reference(out_dir: Path, records: list[dict[str, Any]], crop_border: int) -> None:
    """Print each method's mean PSNR and SSIM (Y, as the protocol computes them) against the float32 output."""
    layout = OutputLayout(out_dir)
    scores: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        if record["method"] == REFERENCE:
            continue
        keys = record["dataset"], record["degradation"]
        ours, reference = (np.asarray(load_image(layout.sr(*keys, name, record["image"]))) for name in
                           (record["method"], REFERENCE))
        scores.setdefault(record["method"], []).append(
            (psnr(ours, reference, crop_border=crop_border), ssim(ours, reference, crop_border=crop_border)))
    for name, values in scores.items():
        mean = np.mean(values, axis=0)
        print(f"{name} against {REFERENCE} ({len(values)} images): PSNR {mean[0]:.2f} dB, SSIM {mean[1]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--psr-decoder", type=Path, required=True, help="small decoder folder (addsr train decoder)")
    parser.add_argument("--model", type=Path, help="AddSR model folder; default: the shipped small model")
    parser.add_argument("--config", type=Path, default=Path("configs/eval-small.yaml"))
    parser.add_argument("--set5", type=Path, help="Set5 HR folder, instead of the config's")
    parser.add_argument("--set14", type=Path, help="Set14 HR folder, instead of the config's")
    parser.add_argument("--datasets", nargs="+", help="keep only these of the config's datasets")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help=f"which to run ({REFERENCE} is always run: the others are compared with it)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int)
    parser.add_argument("-o", "--out-dir", type=Path, default=Path("runs/speed-options"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, out_dir=args.out_dir)
    folders = {"set5": args.set5, "set14": args.set14}
    config.datasets = [dataclasses.replace(spec, path=folders[spec.name]) if folders.get(spec.name) else spec
                       for spec in config.datasets if args.datasets is None or spec.name in args.datasets]
    common = dict(model_dir=args.model, sampler=SamplerSettings(num_steps=args.steps), device="cpu")
    names = [REFERENCE] + [name for name in args.methods if name != REFERENCE]
    run = evaluate(config, [method(name, args.psr_decoder, **common) for name in names])
    print(f"{run.computed} results computed, {run.skipped} already done; report in {run.out_dir}")
    against_reference(run.out_dir, run.records, config.metric_settings.crop_border)


if __name__ == "__main__":
    main()
