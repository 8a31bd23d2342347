"""addsr.models: diffusers' U-Net and ControlNet with SeeSR's image cross-attention."""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import save_file

from addsr.models import ControlNet, UNet

TEXT_DIM, IMAGE_DIM, IMAGE_TOKENS, LATENT = 32, 16, 5, 16
TINY_UNET = dict(
    sample_size=LATENT,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=TEXT_DIM,
    attention_head_dim=(2, 4),
    use_linear_projection=True,
)
TINY_CONTROLNET = {
    **{key: value for key, value in TINY_UNET.items() if key not in ("sample_size", "up_block_types")},
    "conditioning_embedding_out_channels": (8, 16),  # one stride-2 conv: condition at 2x the latent size
}
IMAGE = dict(use_image_cross_attention=True, image_cross_attention_dim=IMAGE_DIM)
EXPECTED_UNET_IMAGE_ATTENTIONS = {
    "down_blocks.0.image_attentions.0",
    "mid_block.image_attentions.0",
    "up_blocks.1.image_attentions.0",
    "up_blocks.1.image_attentions.1",
}
EXPECTED_CONTROLNET_IMAGE_ATTENTIONS = {"down_blocks.0.image_attentions.0", "mid_block.image_attentions.0"}
REPO = Path(__file__).resolve().parents[1]


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Noise on every parameter, so that diffusers' zero-initialised layers take part."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def tiny_unet(image_attention: bool = True, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return randomise(UNet(**TINY_UNET, **(IMAGE if image_attention else {})), seed).eval()


def tiny_controlnet(image_attention: bool = True, seed: int = 1) -> ControlNet:
    torch.manual_seed(seed)
    return randomise(ControlNet(**TINY_CONTROLNET, **(IMAGE if image_attention else {})), seed).eval()


def inputs(seed: int = 0, batch: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, LATENT, LATENT, generator=generator),
        "timestep": torch.tensor([999, 249][:batch]),
        "encoder_hidden_states": torch.randn(batch, 7, TEXT_DIM, generator=generator),
        "image_encoder_hidden_states": torch.randn(batch, IMAGE_TOKENS, IMAGE_DIM, generator=generator),
        "controlnet_cond": torch.rand(batch, 3, 2 * LATENT, 2 * LATENT, generator=generator),
    }


def run(model: torch.nn.Module, x: dict[str, torch.Tensor], image: bool = True) -> list[torch.Tensor]:
    """The model's outputs as a flat list (U-Net: the sample; ControlNet: the residuals)."""
    kwargs = {"image_encoder_hidden_states": x["image_encoder_hidden_states"]} if image else {}
    if isinstance(model, ControlNetModel):
        out = model(x["sample"], x["timestep"], x["encoder_hidden_states"], x["controlnet_cond"], **kwargs)
        return [*out.down_block_res_samples, out.mid_block_res_sample]
    return [model(x["sample"], x["timestep"], x["encoder_hidden_states"], **kwargs).sample]


def assert_outputs_equal(first: list[torch.Tensor], second: list[torch.Tensor], atol: float = 1e-6) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)


def image_attention_prefixes(model: torch.nn.Module) -> set[str]:
    """Names of the image-attention modules, e.g. ``mid_block.image_attentions.0``."""
    names = (name.split(".image_attentions.") for name, _ in model.named_parameters() if ".image_attentions." in name)
    return {f"{block}.image_attentions.{rest.split('.')[0]}" for block, rest in names}


@pytest.mark.parametrize(
    ("build", "expected"),
    [(tiny_unet, EXPECTED_UNET_IMAGE_ATTENTIONS), (tiny_controlnet, EXPECTED_CONTROLNET_IMAGE_ATTENTIONS)],
)
def test_image_attentions_parallel_the_text_attentions(build, expected):
    model = build()
    assert image_attention_prefixes(model) == expected
    for prefix in expected:
        block = model.get_submodule(prefix.split(".image_attentions.")[0])
        assert len(block.image_attentions) == len(block.attentions)
        text, image = block.attentions[0], block.image_attentions[0]
        assert image.transformer_blocks[0].attn2.to_k.in_features == IMAGE_DIM
        assert text.transformer_blocks[0].attn2.to_k.in_features == TEXT_DIM
        text_shapes = {k: v.shape for k, v in text.state_dict().items() if not ("attn2.to_k" in k or "attn2.to_v" in k)}
        assert {k: image.state_dict()[k].shape for k in text_shapes} == text_shapes


@pytest.mark.parametrize("build", [tiny_unet, tiny_controlnet])
def test_plain_model_has_no_image_attentions(build):
    assert image_attention_prefixes(build(image_attention=False)) == set()


@pytest.mark.parametrize("build", [tiny_unet, tiny_controlnet])
def test_image_embeddings_change_the_output(build):
    model, x = build(), inputs()
    other = {**x, "image_encoder_hidden_states": inputs(seed=1)["image_encoder_hidden_states"]}
    with torch.no_grad():
        differences = [(a - b).abs().max().item() for a, b in zip(run(model, x), run(model, other))]
    # the first ControlNet residual is taken before any attention
    assert min(differences[-1:] + differences[1:]) > 1e-3


@pytest.mark.parametrize(
    ("build", "plain_class", "config"),
    [(tiny_unet, UNet2DConditionModel, TINY_UNET), (tiny_controlnet, ControlNetModel, TINY_CONTROLNET)],
)
def test_zeroed_image_attention_equals_plain_diffusers(build, plain_class, config):
    model = build()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".image_attentions." in name and ".proj_out." in name:
                parameter.zero_()
    plain = plain_class(**config).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".image_attentions." not in k})
    x = inputs()
    with torch.no_grad():
        assert_outputs_equal(run(model, x), run(plain, x, image=False))


@pytest.mark.parametrize("build", [tiny_unet, tiny_controlnet])
def test_save_and_load_round_trip(build, tmp_path):
    model, x = build(), inputs()
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["use_image_cross_attention"] is True and config["image_cross_attention_dim"] == IMAGE_DIM
    loaded = type(model).from_pretrained(tmp_path)
    with torch.no_grad():
        assert_outputs_equal(run(loaded, x), run(model, x), atol=0)


def test_released_style_folder_loads(tmp_path):
    """Config as the authors' code writes it (their class name, no image_cross_attention_dim) and .bin weights."""
    torch.manual_seed(0)
    model = randomise(UNet(**TINY_UNET, use_image_cross_attention=True), seed=0).eval()
    config = {k: v for k, v in model.config.items() if not k.startswith("_") and k != "image_cross_attention_dim"}
    config.update(_class_name="UNet2DConditionModel", _diffusers_version="0.25.0", addition_embed_type_num_heads=64)
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    loaded = UNet.from_pretrained(tmp_path)
    assert loaded.config.use_image_cross_attention and loaded.config.image_cross_attention_dim == 512
    x = {**inputs(), "image_encoder_hidden_states": torch.randn(2, IMAGE_TOKENS, 512)}
    with torch.no_grad():
        assert_outputs_equal(run(loaded, x), run(model, x), atol=0)


@pytest.mark.parametrize("low_cpu_mem_usage", [True, False])
def test_plain_unet_folder_loads_with_fresh_image_attentions(tmp_path, caplog, low_cpu_mem_usage):
    plain = tiny_unet(image_attention=False)
    plain.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="addsr.models.image_attention"):
        model = UNet.from_pretrained(tmp_path, low_cpu_mem_usage=low_cpu_mem_usage, **IMAGE)
    assert image_attention_prefixes(model) == EXPECTED_UNET_IMAGE_ATTENTIONS
    assert all(prefix in caplog.text for prefix in EXPECTED_UNET_IMAGE_ATTENTIONS)
    plain_state = plain.state_dict()
    for name, value in model.state_dict().items():
        if ".image_attentions." in name:
            assert value.device.type == "cpu" and torch.isfinite(value).all()
        else:
            assert torch.equal(value, plain_state[name]), name
    fresh_weights = model.down_blocks[0].image_attentions[0].transformer_blocks[0].attn2.to_k.weight
    assert fresh_weights.std() > 0  # PyTorch's default initialisation, not left empty
    with torch.no_grad():
        assert torch.isfinite(run(model, inputs())[0]).all()


def test_folder_missing_other_weights_is_an_error(tmp_path):
    plain = tiny_unet(image_attention=False)
    plain.save_config(tmp_path)
    state = {k: v for k, v in plain.state_dict().items() if k != "conv_in.weight"}
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="conv_in.weight"):
        UNet.from_pretrained(tmp_path, **IMAGE)


def test_controlnet_from_unet_copies_weights_and_image_attentions():
    unet = tiny_unet()
    controlnet = ControlNet.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    assert controlnet.config.use_image_cross_attention and controlnet.config.image_cross_attention_dim == IMAGE_DIM
    unet_state, controlnet_state = unet.state_dict(), controlnet.state_dict()
    shared = [name for name in controlnet_state if name in unet_state]
    assert any(".image_attentions." in name for name in shared)
    assert any(name.startswith("mid_block.") for name in shared)
    for name in shared:
        assert torch.equal(controlnet_state[name], unet_state[name]), name
    unshared = {name.split(".")[0] for name in controlnet_state if name not in unet_state}
    assert unshared == {"controlnet_cond_embedding", "controlnet_down_blocks", "controlnet_mid_block"}


def test_controlnet_from_plain_unet_gets_fresh_image_attentions():
    unet = tiny_unet(image_attention=False)
    controlnet = ControlNet.from_unet(unet, conditioning_embedding_out_channels=(8, 16), **IMAGE)
    assert image_attention_prefixes(controlnet) == EXPECTED_CONTROLNET_IMAGE_ATTENTIONS
    assert torch.equal(controlnet.mid_block.attentions[0].proj_in.weight, unet.mid_block.attentions[0].proj_in.weight)
    with torch.no_grad():
        assert all(torch.isfinite(t).all() for t in run(controlnet, inputs()))


@pytest.mark.parametrize("build", [tiny_unet, tiny_controlnet])
def test_image_encoder_hidden_states_are_checked(build):
    model, x = build(), inputs()
    with pytest.raises(ValueError, match="pass image_encoder_hidden_states"):
        run(model, x, image=False)
    with pytest.raises(ValueError, match=r"shape \(batch=2, tokens, 16\)"):
        run(model, {**x, "image_encoder_hidden_states": x["image_encoder_hidden_states"][:1]})
    with pytest.raises(ValueError, match=r"shape \(batch=2, tokens, 16\)"):
        run(model, {**x, "image_encoder_hidden_states": torch.zeros(2, IMAGE_TOKENS, 8)})
    with pytest.raises(ValueError, match="has no image cross-attention"):
        run(build(image_attention=False), x)


def test_image_states_are_cleared_after_a_failing_call():
    model, x = tiny_unet(), inputs()
    with pytest.raises(RuntimeError):
        run(model, {**x, "encoder_hidden_states": torch.zeros(2, 7, TEXT_DIM + 1)})
    hidden = torch.zeros(2, 32, LATENT, LATENT)
    with pytest.raises(RuntimeError, match="outside its model's forward call"):
        model.down_blocks[0].attentions[0](hidden, encoder_hidden_states=x["encoder_hidden_states"], return_dict=False)


@pytest.mark.parametrize("build", [tiny_unet, tiny_controlnet])
def test_gradient_checkpointing_keeps_outputs_and_reaches_image_attentions(build):
    x = inputs()

    def outputs_and_image_grads(checkpointing: bool):
        model = build().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        outputs = run(model, x)
        sum(output.square().mean() for output in outputs).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if ".image_attentions." in n and "attn2.to_k" in n}
        return outputs, grads

    plain_outputs, plain_grads = outputs_and_image_grads(checkpointing=False)
    ckpt_outputs, ckpt_grads = outputs_and_image_grads(checkpointing=True)
    assert_outputs_equal([o.detach() for o in ckpt_outputs], [o.detach() for o in plain_outputs])
    assert plain_grads.keys() == ckpt_grads.keys() and plain_grads
    for name, grad in ckpt_grads.items():
        assert grad is not None and grad.abs().max() > 0, name
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-7)


def test_deepcopy_runs_its_own_image_attentions():
    """EMA copies: the copy's hooks must use the copy's modules."""
    model, x = tiny_unet(), inputs()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        before = run(model, x)
        for name, parameter in twin.named_parameters():
            if ".image_attentions." in name:
                parameter.mul_(2)
        assert_outputs_equal(run(model, x), before, atol=0)
        assert (run(twin, x)[0] - before[0]).abs().max() > 1e-3


def test_matches_the_authors_implementation():
    """Runs benchmarks/check_reference_models.py when ADDSR_REFERENCE_REPO names the authors' AddSR checkout."""
    reference = os.environ.get("ADDSR_REFERENCE_REPO")
    if not reference:
        pytest.skip("set ADDSR_REFERENCE_REPO to the authors' AddSR checkout (and ADDSR_REFERENCE_PYTHONPATH to a "
                    "folder with diffusers 0.25, see benchmarks/check_reference_models.py) to compare with it")
    command = [sys.executable, str(REPO / "benchmarks" / "check_reference_models.py"), "--reference-repo", reference]
    if os.environ.get("ADDSR_REFERENCE_PYTHONPATH"):
        command += ["--reference-pythonpath", os.environ["ADDSR_REFERENCE_PYTHONPATH"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
