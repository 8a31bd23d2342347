"""Gather everything AddSR (or SeeSR) needs into one model folder (:mod:`addsr.model_folder`), checking every part
first: ``unet/ controlnet/`` from the AddSR (or SeeSR) folder, ``vae/ text_encoder/ tokenizer/ scheduler/`` from the
Stable Diffusion 2 base folder, ``ram/`` (RAM with DAPE merged) and ``manifest.json`` (every file: path, role,
sha256, size).
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .io import update_hash
from .model_folder import BASE_COMPONENTS, NETWORKS, TAGGER_FOLDER, write_manifest
from .tagging import RAMConfig, RAMFileError, RAMTagger

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# A CLIP tokenizer is saved either as BPE files (Stable Diffusion 2 base) or as one tokenizer.json (transformers 5).
TOKENIZER_FILE_SETS = (("vocab.json", "merges.txt", "tokenizer_config.json"), ("tokenizer.json", "tokenizer_config.json"))
# What the released AddSR/SeeSR weights were trained with (Stable Diffusion 2 base).
SCHEDULER_EXPECTED = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
}
_IMAGE_ATTN_KEY = re.compile(r".*\.image_attentions\.\d+\.transformer_blocks\.\d+\.attn2\.to_k\.weight")
_TEXT_ATTN_KEY = re.compile(r".*\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\.to_k\.weight")


class AssembleError(RuntimeError):
    """One or more parts are missing or wrong; ``problems`` lists each one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"cannot assemble the model folder ({len(problems)} problems):\n- " + "\n- ".join(problems))


@dataclass
class _Part:
    """One diffusers/transformers subfolder: where it comes from and what was found in it."""

    name: str
    folder: Path
    config_name: str | None = "config.json"
    weight_names: tuple[str, ...] = ()
    config: dict | None = None
    shapes: dict[str, tuple[int, ...]] | None = None

    def files(self) -> list[tuple[Path, str]]:
        """(source file, role) of everything to copy."""
        if self.name == "tokenizer":
            return [(path, "tokenizer file") for path in sorted(self.folder.iterdir()) if path.is_file()]
        found = [(self.folder / self.config_name, f"{self.name} config")]
        weights = _weight_files(self.folder, self.weight_names)
        return found + [(path, f"{self.name} weights") for path in weights or ()]


def _weight_files(folder: Path, names: tuple[str, ...]) -> list[Path] | None:
    """The weight file, or the index and its shards, of the first of ``names`` present; None if none is."""
    for name in names:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            return [index] + [folder / shard for shard in shards]
    return None


def _read_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Parameter shapes from weight files, reading only safetensors headers where it can."""
    shapes = {}
    for path in files:
        if path.name.endswith(".index.json"):
            continue
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as reader:
                shapes |= {key: tuple(reader.get_slice(key).get_shape()) for key in reader.keys()}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
            shapes |= {key: tuple(value.shape) for key, value in state.items()}
    return shapes


def _load_part(part: _Part) -> list[str]:
    """Read the part's config and weight shapes; the problems found on the way."""
    if not part.folder.is_dir():
        return [f"{part.folder} is missing (the {part.name} subfolder)"]
    if part.name == "tokenizer":
        if any(all((part.folder / name).is_file() for name in files) for files in TOKENIZER_FILE_SETS):
            return []
        expected = " or ".join(" + ".join(files) for files in TOKENIZER_FILE_SETS)
        return [f"{part.folder}: tokenizer files missing (expected {expected})"]
    config_path = part.folder / part.config_name
    try:
        part.config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return [f"{config_path}: cannot read the JSON config ({error})"]
    if not part.weight_names:
        return []
    weights = _weight_files(part.folder, part.weight_names)
    if weights is None:
        return [f"{part.folder}: no weights (expected one of {', '.join(part.weight_names)})"]
    missing = [f"{path} is missing (listed in the weight index)" for path in weights if not path.is_file()]
    if missing:
        return missing
    try:
        part.shapes = _read_shapes(weights)
    except Exception as error:  # safetensors/torch raise many types for a damaged file
        return [f"{part.folder}: cannot read the weights ({error}); the file may be truncated"]
    return []


def _require_keys(part: _Part, keys: tuple[str, ...]) -> list[str]:
    return [f"{part.folder}: weights lack {key}" for key in keys if key not in part.shapes]


def _check_attention_widths(part: _Part, image_embed_dim: int) -> list[str]:
    """Text cross-attention takes the config's ``cross_attention_dim``; image cross-attention RAM's width."""
    problems = []
    if part.config.get("use_image_cross_attention") is not True:
        problems.append(
            f"{part.folder / 'config.json'}: use_image_cross_attention is not true; "
            "this is not the AddSR/SeeSR model (a plain Stable Diffusion one lacks the image cross-attention)"
        )
    image_keys = [key for key in part.shapes if _IMAGE_ATTN_KEY.fullmatch(key)]
    if not image_keys:
        problems.append(f"{part.folder}: weights have no image_attentions (the image cross-attention)")
    problems += [
        f"{part.folder}: {key} takes {part.shapes[key][1]} channels, RAM embeddings have {image_embed_dim}"
        for key in image_keys
        if part.shapes[key][1] != image_embed_dim
    ]
    text_width = part.config.get("cross_attention_dim")
    problems += [
        f"{part.folder}: {key} takes {part.shapes[key][1]} channels, config cross_attention_dim is {text_width}"
        for key in part.shapes
        if _TEXT_ATTN_KEY.fullmatch(key) and part.shapes[key][1] != text_width
    ]
    return problems


def _check_unet(part: _Part, image_embed_dim: int) -> list[str]:
    return _require_keys(part, ("conv_in.weight", "conv_out.weight")) + _check_attention_widths(part, image_embed_dim)


def _check_controlnet(part: _Part, image_embed_dim: int) -> list[str]:
    keys = ("conv_in.weight", "controlnet_cond_embedding.conv_in.weight", "controlnet_mid_block.weight")
    return _require_keys(part, keys) + _check_attention_widths(part, image_embed_dim)


def _check_vae(part: _Part) -> list[str]:
    problems = _require_keys(part, ("encoder.conv_in.weight", "decoder.conv_out.weight", "post_quant_conv.weight"))
    latent = part.config.get("latent_channels")
    if "post_quant_conv.weight" in part.shapes and part.shapes["post_quant_conv.weight"][0] != latent:
        problems.append(f"{part.folder}: post_quant_conv does not match latent_channels {latent}")
    return problems


def _check_text_encoder(part: _Part) -> list[str]:
    # transformers < 5 saves CLIPTextModel's weights under "text_model.", transformers 5 without it
    prefix = "text_model." if "text_model.embeddings.token_embedding.weight" in part.shapes else ""
    key = f"{prefix}embeddings.token_embedding.weight"
    problems = _require_keys(part, (key, f"{prefix}final_layer_norm.weight"))
    if key in part.shapes and part.shapes[key][1] != part.config.get("hidden_size"):
        problems.append(f"{part.folder}: {key} does not match hidden_size {part.config.get('hidden_size')}")
    return problems


def _check_scheduler(part: _Part) -> list[str]:
    config = {"prediction_type": "epsilon"} | part.config
    return [
        f"{part.folder / part.config_name}: {name} is {config.get(name)!r}, expected {expected!r}"
        + (" (use stable-diffusion-2-base, not the 768 v-prediction model)" if name == "prediction_type" else "")
        for name, expected in SCHEDULER_EXPECTED.items()
        if config.get(name) != expected
    ]


def _check_together(parts: dict[str, _Part]) -> list[str]:
    """Widths that must agree across parts."""
    unet, controlnet, vae, text = (parts[name].config for name in ("unet", "controlnet", "vae", "text_encoder"))
    text_width = text.get("hidden_size")
    pairs = [
        ("unet cross_attention_dim", unet.get("cross_attention_dim"), "text_encoder hidden_size", text_width),
        ("unet in_channels", unet.get("in_channels"), "vae latent_channels", vae.get("latent_channels")),
        ("controlnet in_channels", controlnet.get("in_channels"), "unet in_channels", unet.get("in_channels")),
    ]
    return [f"{a} ({x}) differs from {b} ({y})" for a, x, b, y in pairs if x != y]


PART_FILES = {
    "unet": {"weight_names": DIFFUSERS_WEIGHTS},
    "controlnet": {"weight_names": DIFFUSERS_WEIGHTS},
    "vae": {"weight_names": DIFFUSERS_WEIGHTS},
    "text_encoder": {"weight_names": TRANSFORMERS_WEIGHTS},
    "tokenizer": {"config_name": None},
    "scheduler": {"config_name": "scheduler_config.json"},
}


def _parts(base: Path, model: Path) -> dict[str, _Part]:
    """The model folder's parts: the networks from ``model``, the rest from ``base``."""
    sources = {name: model for name in NETWORKS} | {name: base for name in BASE_COMPONENTS}
    return {name: _Part(name, folder / name, **PART_FILES[name]) for name, folder in sources.items()}


def _check_parts(parts: dict[str, _Part], image_embed_dim: int) -> list[str]:
    """Load every part and check it alone, then the parts together."""
    checks = {
        "unet": lambda part: _check_unet(part, image_embed_dim),
        "controlnet": lambda part: _check_controlnet(part, image_embed_dim),
        "vae": _check_vae,
        "text_encoder": _check_text_encoder,
        "tokenizer": lambda part: [],
        "scheduler": _check_scheduler,
    }
    problems = []
    for name, part in parts.items():
        if part.folder.parent.is_dir():  # a missing parent folder is reported once, by the caller
            problems += _load_part(part) or checks[name](part)
    if all(parts[name].config is not None for name in ("unet", "controlnet", "vae", "text_encoder")):
        problems += _check_together(parts)
    return problems


def assemble_model(
    base: Path,
    model: Path,
    ram: Path,
    dape: Path | None,
    tag_list: Path,
    tag_thresholds: Path | None,
    out: Path,
    *,
    ram_config: RAMConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Check every part, then write the model folder ``out`` atomically; returns ``out``.

    ``base``: Stable Diffusion 2 base folder; ``model``: AddSR or SeeSR folder (``unet/``, ``controlnet/``);
    ``ram``: ``ram_swin_large_14m.pth``; ``dape``: SeeSR's ``DAPE.pth``; ``tag_list`` / ``tag_thresholds``:
    RAM's ``ram_tag_list.txt`` / ``ram_tag_list_threshold.txt``. Raises :class:`AssembleError` listing
    every problem found; nothing is written then.
    """
    base, model, out = Path(base), Path(model), Path(out)
    ram_config = ram_config or RAMConfig()
    problems = [] if overwrite or not out.exists() else [f"{out} already exists; choose another folder or overwrite it"]
    for folder, what in ((base, "Stable Diffusion 2 base folder"), (model, "AddSR or SeeSR model folder")):
        if not folder.is_dir():
            problems.append(f"{folder} does not exist (the {what})")
    parts = _parts(base, model)
    problems += _check_parts(parts, ram_config.embed_dim)
    try:
        tagger = RAMTagger.from_checkpoints(
            ram, dape, tag_list=tag_list, tag_thresholds=tag_thresholds, config=ram_config
        )
    except (RAMFileError, ValueError) as error:
        problems.append(f"RAM: {error}")
    if problems:
        raise AssembleError(problems)
    sources = {"base": base, "model": model, "ram": ram, "dape": dape, "tag_list": tag_list}
    _write(out, parts, tagger, sources | {"tag_thresholds": tag_thresholds})
    return out


def _copy_hashed(source: Path, target: Path) -> tuple[str, int]:
    """Copy a file, returning its sha256 and size."""
    digest, size = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(1 << 24):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    update_hash(digest, path)
    return digest.hexdigest()


def _source_record(path: str | Path | None) -> dict | None:
    """Where an input came from, with the sha256 of single files."""
    if path is None:
        return None
    path = Path(path).resolve()
    return {"path": str(path)} | ({"sha256": _sha256(path)} if path.is_file() else {})


RAM_ROLES = {
    "config.json": "RAM tagger config",
    "model.safetensors": "RAM tagger weights (RAM, with DAPE merged when given)",
    "tag_list.txt": "RAM tag list",
    "tag_thresholds.txt": "RAM per-tag thresholds",
}


def _write(out: Path, parts: dict[str, _Part], tagger: RAMTagger, sources: dict) -> None:
    """Write everything into a staging folder next to ``out``, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        entries = []
        for name, part in parts.items():
            for source, role in part.files():
                sha256, size = _copy_hashed(source, staging / name / source.name)
                entries.append({"path": f"{name}/{source.name}", "role": role, "sha256": sha256, "size": size})
        tagger.save_pretrained(staging / TAGGER_FOLDER)
        for path in sorted((staging / TAGGER_FOLDER).iterdir()):
            role, sha256, size = RAM_ROLES[path.name], _sha256(path), path.stat().st_size
            entries.append({"path": f"{TAGGER_FOLDER}/{path.name}", "role": role, "sha256": sha256, "size": size})
        write_manifest(
            staging, entries, sources={name: _source_record(path) for name, path in sources.items()},
            ram_load_reports=[report.summary() for report in tagger.load_reports],
        )
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_folder(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an existing ``out`` is removed only once ``new`` is in place."""
    if not out.exists():
        os.rename(new, out)
        return
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old)
