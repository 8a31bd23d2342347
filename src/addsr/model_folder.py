"""The model folder: the one set of rules for where an AddSR model's parts are and how they are found, loaded and
written, used by the pipeline, training, ``addsr assemble`` and the small model's base folder.

Layout (the released AddSR and SeeSR weights hold ``unet/`` and ``controlnet/``; the rest may come from a base
folder)::

    unet/ controlnet/                          the model's own networks (diffusers folders)
    vae/ text_encoder/ tokenizer/ scheduler/   Stable Diffusion 2 base's parts, here or in a base folder
    ram/                                       the RAM tagger (RAMTagger.save_pretrained), optional
    color_fix.json                             the model's own colour fix (ColorFix fields), optional
    manifest.json                              written by `addsr assemble`: every file's role, sha256 and size
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDPMScheduler
from transformers import CLIPTextModel, CLIPTokenizer

from .colorfix import ColorFix
from .diffusion import NoiseSchedule
from .io import save_text
from .tagging import RAMTagger, Tagger

NETWORKS = ("unet", "controlnet")
"""The model's own parts, always in the model folder itself."""
BASE_COMPONENTS = ("vae", "text_encoder", "tokenizer", "scheduler")
"""Stable Diffusion 2 base's parts: from the first of the searched folders that has each."""
TAGGER_FOLDER = "ram"
COLOR_FIX_FILE = "color_fix.json"
"""A model folder's own colour fix (``ColorFix`` fields as JSON); without it the model uses the released AdaIN."""
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "addsr-model-folder"
DEFAULT_MODEL_DIR = Path(__file__).with_name("default_model")
"""The small AddSR trained by this project and shipped in the package (docs/small-model.md)."""


def model_folders(*folders: str | Path | None) -> list[Path]:
    """The given folders that are set, in order of preference."""
    return [Path(folder) for folder in folders if folder is not None]


def default_model_dir() -> Path:
    """:data:`DEFAULT_MODEL_DIR`, or an error when the installation lacks it."""
    if not (DEFAULT_MODEL_DIR / "unet").is_dir():
        raise FileNotFoundError(
            f"the default model is missing from this installation ({DEFAULT_MODEL_DIR}): reinstall addsr, "
            "or pass a model folder"
        )
    return DEFAULT_MODEL_DIR


def network_paths(folder: str | Path) -> dict[str, Path]:
    """``unet/`` and ``controlnet/`` of a model folder, or an error naming the one it lacks."""
    folder = Path(folder)
    for name in NETWORKS:
        if not (folder / name).is_dir():
            raise FileNotFoundError(f"{folder} has no '{name}/' folder: is it an AddSR or SeeSR model folder?")
    return {name: folder / name for name in NETWORKS}


def locate(name: str, folders: Sequence[Path], hint: str) -> Path:
    """The first ``folder/name`` that exists, or an error naming the folders searched and, in ``hint``, what to do."""
    for folder in folders:
        if (folder / name).is_dir():
            return folder / name
    searched = " or ".join(map(str, folders)) or "no folder (none given)"
    raise FileNotFoundError(f"No '{name}/' folder in {searched}. {hint}")


@dataclass
class BaseComponents:
    """Stable Diffusion 2 base's parts: the VAE, the text encoder and its tokenizer, and the noise schedule."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    schedule: NoiseSchedule


def base_component_paths(
    folders: Sequence[Path], hint: str, vae_folder: Path | None = None
) -> dict[str, Path]:
    """Where each of :data:`BASE_COMPONENTS` is: the first of ``folders`` that has it (the VAE from ``vae_folder``
    when set)."""
    searched = {name: list(folders) for name in BASE_COMPONENTS}
    if vae_folder is not None:
        searched["vae"] = [vae_folder]
    return {name: locate(name, places, hint) for name, places in searched.items()}


def load_base_components(paths: dict[str, Path]) -> BaseComponents:
    """The parts at ``paths`` (see :func:`base_component_paths`)."""
    return BaseComponents(
        vae=AutoencoderKL.from_pretrained(paths["vae"]),
        text_encoder=CLIPTextModel.from_pretrained(paths["text_encoder"]),
        tokenizer=CLIPTokenizer.from_pretrained(paths["tokenizer"]),
        schedule=NoiseSchedule.from_pretrained(paths["scheduler"]),
    )


def save_base_components(folder: Path, components: BaseComponents, tagger: Tagger | None = None) -> None:
    """Write ``vae/ text_encoder/ tokenizer/ scheduler/`` and, when the tagger can save itself, ``ram/``."""
    components.vae.save_pretrained(folder / "vae")
    components.text_encoder.save_pretrained(folder / "text_encoder")
    components.tokenizer.save_pretrained(folder / "tokenizer")
    DDPMScheduler.from_config(components.schedule.config).save_pretrained(folder / "scheduler")
    if hasattr(tagger, "save_pretrained"):
        tagger.save_pretrained(folder / TAGGER_FOLDER)


def load_tagger(
    folders: Sequence[Path],
    ram: str | Path | None = None,
    dape: str | Path | None = None,
    tag_list: str | Path | None = None,
    tag_thresholds: str | Path | None = None,
) -> Tagger | None:
    """The RAM tagger: ``ram`` (a ``ram/`` folder, or RAM's ``ram_swin_large_14m.pth`` with ``tag_list``, optional
    ``tag_thresholds`` and SeeSR's ``dape`` merged over it); without ``ram``, the ``ram/`` folder of the first of
    ``folders`` that has one; else None."""
    if ram is None:
        if dape is not None:
            raise ValueError("the DAPE checkpoint is merged over RAM: give RAM's ram_swin_large_14m.pth too")
        found = [folder / TAGGER_FOLDER for folder in folders if (folder / TAGGER_FOLDER).is_dir()]
        return RAMTagger.from_pretrained(found[0]).eval() if found else None
    if Path(ram).is_dir():
        return RAMTagger.from_pretrained(ram).eval()
    if tag_list is None:
        raise ValueError(f"{ram} is RAM's checkpoint: give RAM's tag list (ram_tag_list.txt) too")
    return RAMTagger.from_checkpoints(ram, dape=dape, tag_list=tag_list, tag_thresholds=tag_thresholds).eval()


def read_color_fix(folder: str | Path) -> ColorFix:
    """The fix named in ``folder/color_fix.json``, else the released default (AdaIN)."""
    path = Path(folder) / COLOR_FIX_FILE
    if not path.is_file():
        return ColorFix()
    try:
        return ColorFix(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a valid colour fix ({error}); expected e.g. "
                         '{"method": "wavelet", "wavelet_levels": 3}') from None


def write_color_fix(folder: str | Path, fix: ColorFix) -> Path:
    """Write ``folder/color_fix.json`` (through a temporary file, so never half-written)."""
    return save_text(json.dumps(asdict(fix), indent=2) + "\n", Path(folder) / COLOR_FIX_FILE)


def write_manifest(
    folder: Path, files: list[dict[str, Any]], sources: dict[str, Any], ram_load_reports: list[Any]
) -> Path:
    """``folder/manifest.json``: every file (``path``, ``role``, ``sha256``, ``size``), where the inputs came from and
    what loading RAM reported."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "sources": sources,
        "ram_load_reports": ram_load_reports,
        "files": files,
    }
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path
