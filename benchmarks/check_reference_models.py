"""Check addsr.models.UNet / ControlNet against the authors' SeeSR/AddSR implementation.

The authors' models are imported at run time from their checkout (``--reference-repo``), never copied. Their
code targets diffusers 0.25, so their half runs in a subprocess whose ``PYTHONPATH`` starts with
``--reference-pythonpath`` (a folder holding the old diffusers). It builds tiny versions of both models with
image cross-attention, gives every parameter random values, runs them on random inputs, and writes the models with
their own ``save_pretrained`` plus the inputs and outputs. This process then

1. builds our models from the same config and checks that their parameter names equal the authors', key for key;
2. loads the authors' saved folders unchanged with ``UNet.from_pretrained`` / ``ControlNet.from_pretrained``;
3. runs them on the same inputs and prints the largest absolute differences (exit status 1 above --tolerance).

Setup of the old diffusers (once)::

    pip install --target /tmp/olddiff --no-deps diffusers==0.25.0 huggingface_hub==0.20.3 \
        transformers==4.37.2 tokenizers==0.15.2

Run::

    python benchmarks/check_reference_models.py --reference-repo /tmp/ref/addsr --reference-pythonpath /tmp/olddiff
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TINY_UNET_CONFIG = dict(
    sample_size=16,
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=(2, 4, 4),
    use_linear_projection=True,
)
TINY_CONTROLNET_CONFIG = {k: v for k, v in TINY_UNET_CONFIG.items() if k not in ("sample_size", "up_block_types")}
IMAGE_TOKENS, IMAGE_DIM = 145, 512  # RAM representation tokens; the authors' image attention width is fixed at 512
BATCH, TEXT_TOKENS, LATENT_SIZE = 2, 7, 16
WEIGHT_NOISE = 0.05


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Add noise to every parameter, so that zero-initialised layers take part too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * WEIGHT_NOISE)


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(BATCH, 4, LATENT_SIZE, LATENT_SIZE, generator=generator),
        "timestep": torch.tensor([999, 249]),
        "text": torch.randn(BATCH, TEXT_TOKENS, TINY_UNET_CONFIG["cross_attention_dim"], generator=generator),
        "image": torch.randn(BATCH, IMAGE_TOKENS, IMAGE_DIM, generator=generator),
        "condition": torch.rand(BATCH, 3, 8 * LATENT_SIZE, 8 * LATENT_SIZE, generator=generator),
    }


def _run_models(unet, controlnet, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Outputs of the ControlNet, the U-Net with its residuals and the U-Net alone, by name."""
    with torch.no_grad():
        down, mid = controlnet(
            inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["text"],
            controlnet_cond=inputs["condition"], image_encoder_hidden_states=inputs["image"], return_dict=False,
        )[:2]
        outputs = {f"controlnet.down.{i}": residual for i, residual in enumerate(down)}
        outputs["controlnet.mid"] = mid
        controlled = dict(down_block_additional_residuals=list(down), mid_block_additional_residual=mid)
        for name, residuals in (("unet.controlled", controlled), ("unet.alone", {})):
            outputs[name] = unet(
                inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["text"],
                image_encoder_hidden_states=inputs["image"], return_dict=False, **residuals,
            )[0]
    return outputs


def reference_half(reference_repo: Path, out_dir: Path) -> None:
    """Runs with the authors' code on sys.path: tiny random models, their saved folders, inputs and outputs."""
    sys.path.insert(0, str(reference_repo))
    from models.controlnet import ControlNetModel
    from models.unet_2d_condition import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG, use_image_cross_attention=True).eval()
    controlnet = ControlNetModel(**TINY_CONTROLNET_CONFIG, use_image_cross_attention=True).eval()
    _randomise(unet, seed=1)
    _randomise(controlnet, seed=2)
    unet.save_pretrained(out_dir / "unet", safe_serialization=True)
    controlnet.save_pretrained(out_dir / "controlnet", safe_serialization=True)
    inputs = _inputs()
    outputs = _run_models(unet, controlnet, inputs)
    save_file({**{f"input.{k}": v for k, v in inputs.items()}, **outputs}, str(out_dir / "reference.safetensors"))


def _run_reference_half(args: argparse.Namespace, out_dir: Path) -> None:
    python_path = [str(path) for path in (args.reference_pythonpath,) if path is not None]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(python_path + [os.environ.get("PYTHONPATH", "")]).strip(os.pathsep),
        "HF_HOME": str(out_dir / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore::FutureWarning",
    }
    command = [args.python, __file__, "--reference-repo", str(args.reference_repo)]
    subprocess.run([*command, "--reference-half-out", str(out_dir)], env=env, check=True)


def _key_mismatch(ours: set[str], theirs: set[str]) -> str:
    return f"only ours: {sorted(ours - theirs)[:5]}, only the authors': {sorted(theirs - ours)[:5]}"


def our_half(out_dir: Path, tolerance: float) -> bool:
    """Loads the authors' folders into our classes and compares outputs; True when all match."""
    from addsr.models import ControlNet, UNet

    ok = True
    for name, cls, config in (("unet", UNet, TINY_UNET_CONFIG), ("controlnet", ControlNet, TINY_CONTROLNET_CONFIG)):
        theirs = set(load_file(str(out_dir / name / "diffusion_pytorch_model.safetensors")))
        ours = set(cls(**config, use_image_cross_attention=True).state_dict())
        same = ours == theirs
        ok &= same
        print(f"{name}: {len(ours)} parameter names, key-for-key equal to the authors': {same}")
        if not same:
            print(f"  {_key_mismatch(ours, theirs)}")

    unet, unet_info = UNet.from_pretrained(out_dir / "unet", output_loading_info=True)
    controlnet, controlnet_info = ControlNet.from_pretrained(out_dir / "controlnet", output_loading_info=True)
    for name, info in (("unet", unet_info), ("controlnet", controlnet_info)):
        clean = not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
        ok &= clean
        print(f"{name}: authors' save_pretrained folder loads with from_pretrained, "
              f"no missing/unexpected keys: {clean}")

    reference = load_file(str(out_dir / "reference.safetensors"))
    inputs = {key.removeprefix("input."): value for key, value in reference.items() if key.startswith("input.")}
    outputs = _run_models(unet.eval(), controlnet.eval(), inputs)
    for name, value in outputs.items():
        difference = (value - reference[name]).abs().max().item()
        scale = reference[name].abs().max().item()
        ok &= difference <= tolerance
        print(f"{name:22s} max |ours - authors'| = {difference:.3e}   (max |output| = {scale:.3e})")
    print(f"{'PASS' if ok else 'FAIL'} (tolerance {tolerance:g}, float32, CPU)")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-repo", type=Path, required=True, help="the authors' AddSR (or SeeSR) checkout")
    parser.add_argument("--reference-pythonpath", type=Path, help="folder with the diffusers their code needs (0.25)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the authors' half")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--reference-half-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.reference_half_out is not None:
        reference_half(args.reference_repo.resolve(), args.reference_half_out)
        return
    if not (args.reference_repo / "models" / "unet_2d_condition.py").is_file():
        parser.error(f"{args.reference_repo} has no models/unet_2d_condition.py; pass the authors' AddSR checkout")
    with tempfile.TemporaryDirectory() as tmp:
        _run_reference_half(args, Path(tmp))
        sys.exit(0 if our_half(Path(tmp), args.tolerance) else 1)


if __name__ == "__main__":
    main()
