"""addsr.assemble: gathering SD2 base, AddSR, RAM and DAPE into one checked model folder."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from addsr.assemble import AssembleError, assemble_model
from addsr.tagging import RAMTagger

from ram_cases import TINY, random_dape, random_tiny_model, write_files

TEXT_WIDTH = 32
SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def zeros(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {key: torch.zeros(shape) for key, shape in shapes.items()}


def denoiser_shapes(image_width: int = TINY.embed_dim) -> dict[str, tuple[int, ...]]:
    """Keys a SeeSR-style U-Net/ControlNet checks look at: text and image cross-attention."""
    return {
        "conv_in.weight": (8, 4, 3, 3),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": (8, TEXT_WIDTH),
        "down_blocks.0.image_attentions.0.transformer_blocks.0.attn2.to_k.weight": (8, image_width),
        "mid_block.image_attentions.0.transformer_blocks.0.attn2.to_k.weight": (8, image_width),
    }


def text_encoder_shapes(width: int) -> dict[str, tuple[int, ...]]:
    return {"text_model.embeddings.token_embedding.weight": (10, width), "text_model.final_layer_norm.weight": (width,)}


def denoiser_config(name: str) -> dict:
    return {"_class_name": name, "in_channels": 4, "cross_attention_dim": TEXT_WIDTH, "use_image_cross_attention": True}


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """Tiny stand-ins for every part: SD2 base folder, AddSR folder, RAM, DAPE and tag files."""
    base, addsr = tmp_path / "sd2-base", tmp_path / "addsr"
    write_json(base / "vae" / "config.json", {"_class_name": "AutoencoderKL", "latent_channels": 4})
    vae = {
        "encoder.conv_in.weight": (8, 3, 3, 3),
        "decoder.conv_out.weight": (3, 8, 3, 3),
        "post_quant_conv.weight": (4, 4, 1, 1),
    }
    save_file(zeros(vae), base / "vae" / "diffusion_pytorch_model.safetensors")
    save_file(zeros(vae), base / "vae" / "diffusion_pytorch_model.fp16.safetensors")  # a variant: not copied
    write_json(base / "text_encoder" / "config.json", {"architectures": ["CLIPTextModel"], "hidden_size": TEXT_WIDTH})
    save_file(zeros(text_encoder_shapes(TEXT_WIDTH)), base / "text_encoder" / "model.safetensors")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        write_json(base / "tokenizer" / name, {"name": name})
    write_json(base / "scheduler" / "scheduler_config.json", SCHEDULER)

    write_json(addsr / "unet" / "config.json", denoiser_config("UNet2DConditionModel"))
    unet = zeros(denoiser_shapes() | {"conv_out.weight": (4, 8, 3, 3)})
    shards = {  # a sharded checkpoint: an index and two files
        "diffusion_pytorch_model-00001-of-00002.safetensors": dict(list(unet.items())[:2]),
        "diffusion_pytorch_model-00002-of-00002.safetensors": dict(list(unet.items())[2:]),
    }
    for shard, tensors in shards.items():
        save_file(tensors, addsr / "unet" / shard)
    weight_map = {key: shard for shard, tensors in shards.items() for key in tensors}
    write_json(addsr / "unet" / "diffusion_pytorch_model.safetensors.index.json", {"weight_map": weight_map})
    write_json(addsr / "controlnet" / "config.json", denoiser_config("ControlNetModel"))
    controlnet = denoiser_shapes() | {
        "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
        "controlnet_mid_block.weight": (8, 8, 1, 1),
    }
    torch.save(zeros(controlnet), addsr / "controlnet" / "diffusion_pytorch_model.bin")

    ram = random_tiny_model()
    paths = write_files(tmp_path, ram)
    torch.save(random_dape(ram), tmp_path / "dape.pth")
    return {"base": base, "model": addsr, "ram": paths["ram"], "dape": tmp_path / "dape.pth",
            "tag_list": paths["tags"], "tag_thresholds": paths["thresholds"], "out": tmp_path / "out" / "addsr-full"}


def assemble(inputs: dict[str, Path], **kwargs) -> Path:
    return assemble_model(**inputs, ram_config=TINY, **kwargs)


def leftovers(folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if path.name.startswith(".")] if folder.exists() else []


def test_assemble_gathers_every_part_with_a_manifest(inputs):
    out = assemble(inputs)
    manifest = json.loads((out / "manifest.json").read_text())
    files = {entry["path"]: entry for entry in manifest["files"]}
    for path, entry in files.items():
        data = (out / path).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
    on_disk = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    assert on_disk == set(files) | {"manifest.json"}
    assert {path.split("/")[0] for path in files} == {
        "unet", "controlnet", "vae", "text_encoder", "tokenizer", "scheduler", "ram"
    }
    assert files["unet/diffusion_pytorch_model-00002-of-00002.safetensors"]["role"] == "unet weights"
    assert files["controlnet/diffusion_pytorch_model.bin"]["role"] == "controlnet weights"
    assert "vae/diffusion_pytorch_model.fp16.safetensors" not in files
    assert manifest["sources"]["dape"]["sha256"] == hashlib.sha256(inputs["dape"].read_bytes()).hexdigest()
    assert leftovers(out.parent) == []

    tagger = RAMTagger.from_pretrained(out / "ram")
    tag_files = {"tag_list": inputs["tag_list"], "tag_thresholds": inputs["tag_thresholds"]}
    expected = RAMTagger.from_checkpoints(inputs["ram"], inputs["dape"], **tag_files, config=TINY)
    images = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(tagger.embeddings(images), expected.embeddings(images))


def test_assemble_lists_every_problem_and_writes_nothing(inputs):
    unet_config = inputs["model"] / "unet" / "config.json"
    write_json(unet_config, json.loads(unet_config.read_text()) | {"use_image_cross_attention": False})
    (inputs["base"] / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (inputs["base"] / "vae" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    write_json(inputs["base"] / "scheduler" / "scheduler_config.json", SCHEDULER | {"prediction_type": "v_prediction"})
    text_weights = inputs["base"] / "text_encoder" / "model.safetensors"
    text_weights.write_bytes(text_weights.read_bytes()[:-10])
    (inputs["base"] / "tokenizer" / "merges.txt").unlink()
    controlnet_bin = inputs["model"] / "controlnet" / "diffusion_pytorch_model.bin"
    torch.save(zeros(denoiser_shapes(image_width=16)), controlnet_bin)
    inputs["ram"].write_bytes(inputs["ram"].read_bytes()[:1000])

    with pytest.raises(AssembleError) as error:
        assemble(inputs)
    problems = error.value.problems
    expected = [
        "unet/config.json: use_image_cross_attention is not true",
        "vae: no weights (expected one of diffusion_pytorch_model.safetensors",
        "prediction_type is 'v_prediction', expected 'epsilon'",
        "text_encoder: cannot read the weights",
        "tokenizer: tokenizer files missing",
        "controlnet: weights lack controlnet_cond_embedding.conv_in.weight",
        "image_attentions.0.transformer_blocks.0.attn2.to_k.weight takes 16 channels, RAM embeddings have 12",
        "RAM: cannot read",
    ]
    for text in expected:
        assert sum(text in problem for problem in problems) >= 1, (text, problems)
    assert all(text in str(error.value) for text in expected)
    assert not inputs["out"].exists() and leftovers(inputs["out"].parent) == []


def test_assemble_checks_widths_across_parts(inputs):
    write_json(inputs["base"] / "text_encoder" / "config.json", {"hidden_size": 64})
    save_file(zeros(text_encoder_shapes(64)), inputs["base"] / "text_encoder" / "model.safetensors")
    with pytest.raises(AssembleError) as error:
        assemble(inputs)
    assert error.value.problems == ["unet cross_attention_dim (32) differs from text_encoder hidden_size (64)"]


def test_assemble_names_missing_input_folders(inputs, tmp_path):
    with pytest.raises(AssembleError) as error:
        assemble(inputs | {"base": tmp_path / "nowhere", "dape": tmp_path / "DAPE.pth"})
    problems = error.value.problems
    assert problems[0] == f"{tmp_path / 'nowhere'} does not exist (the Stable Diffusion 2 base folder)"
    assert len(problems) == 2 and problems[1].startswith(f"RAM: {tmp_path / 'DAPE.pth'} does not exist")


def test_assemble_replaces_an_existing_folder_only_when_asked(inputs):
    inputs["out"].mkdir(parents=True)
    (inputs["out"] / "stale.txt").write_text("old")
    with pytest.raises(AssembleError, match="already exists"):
        assemble(inputs)
    out = assemble(inputs, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()
    assert leftovers(out.parent) == []
