"""What the output-changing speed options cost under the evaluation protocol: an AddSR model as it is, with a small
PSR decoder (``--psr-decoder``), in bfloat16, and both, scored by ``addsr.evaluation`` (PSNR, SSIM, NIQE, seconds
per image) on an evaluation config's data and degradations (default ``configs/eval-small.yaml``: Set5 + Set14 under
the paper's four degradations).

The methods are ``addsr.evaluation.AddSRMethod`` with the decoder set after loading; ``addsr eval`` has no option
for it. Runs are resumable, like ``addsr eval``; figures go to docs/performance.md.

    python benchmarks/speed_options_quality.py --psr-decoder runs/small/psr-decoder/decoder \\
        --set5 ../shared/data/val/set5 --set14 ../shared/data/val/set14 -o runs/speed-options
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from addsr.evaluation import DatasetSpec, evaluate, load_config
from addsr.evaluation.methods import AddSRMethod, weights_fingerprint


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--psr-decoder", type=Path, required=True, help="small decoder folder (addsr train decoder)")
    parser.add_argument("--model", type=Path, help="AddSR model folder; default: the shipped small model")
    parser.add_argument("--config", type=Path, default=Path("configs/eval-small.yaml"))
    parser.add_argument("--set5", type=Path, help="Set5 HR folder, instead of the config's")
    parser.add_argument("--set14", type=Path, help="Set14 HR folder, instead of the config's")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int)
    parser.add_argument("-o", "--out-dir", type=Path, default=Path("runs/speed-options"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, out_dir=args.out_dir)
    folders = {"set5": args.set5, "set14": args.set14}
    config.datasets = [dataclasses.replace(spec, path=folders[spec.name]) if folders.get(spec.name) else spec
                       for spec in config.datasets]
    common = dict(model_dir=args.model, num_steps=args.steps, device="cpu")
    methods = [
        AddSRMethod(name="float32", dtype="float32", **common),
        PSRDecoderMethod(args.psr_decoder, name="float32+psr-decoder", dtype="float32", **common),
        AddSRMethod(name="bfloat16", dtype="bfloat16", **common),
        PSRDecoderMethod(args.psr_decoder, name="bfloat16+psr-decoder", dtype="bfloat16", **common),
    ]
    run = evaluate(config, methods)
    print(f"{run.computed} results computed, {run.skipped} already done; report in {run.out_dir}")


if __name__ == "__main__":
    main()
