"""Training prompts made once, as the released data preparation makes them: the tags of every USM-sharpened HR image
by plain RAM (SeeSR's and AddSR's ``utils_data/make_tags.py``), cached in one JSON file beside the data.

The file maps each image, by its path relative to the file's folder, to its tags, and records what made them (the
tagger's weights, tag list and thresholds as a SHA-256, the sharpening, the resize). Writing it again with the same
settings only tags images it lacks, so an interrupted run continues; other settings are refused unless asked to
replace the file. Training with ``data.tag_source: cache`` reads it and fails, naming the images, when any lacks tags.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..degradations import ops
from ..devices import resolve_device
from ..io import load_image, pil_to_tensor, save_text
from ..model_folder import load_tagger
from ..tagging import Tagger
from .config import DataConfig
from .data import list_hr_images

logger = logging.getLogger(__name__)

FORMAT = "addsr-tag-cache/1"
SAVE_EVERY = 50
"""Batches between writes of the file while tagging (an interrupted run keeps what was written)."""


class TagCacheError(ValueError):
    """A tag cache that is missing, of another format, or made with other settings."""


def cache_key(image: Path, cache_file: Path) -> str:
    """The key of ``image`` in ``cache_file``: its path relative to the file's folder, with ``/``."""
    return Path(os.path.relpath(Path(image).absolute(), Path(cache_file).absolute().parent)).as_posix()


def tagger_fingerprint(tagger: Tagger) -> str:
    """SHA-256 of the tagger's weights (in name order), tag list and thresholds: which tagger made the tags."""
    digest = hashlib.sha256()
    if isinstance(tagger, torch.nn.Module):
        for name, tensor in sorted(tagger.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps([getattr(tagger, "tag_list", None), getattr(tagger, "class_thresholds", None)]).encode())
    return digest.hexdigest()


def cache_settings(data: DataConfig, tagger: Tagger) -> dict[str, Any]:
    """What the tags depend on besides the images."""
    degradation = data.degradation
    sharpen = {"weight": degradation.usm_weight, "radius": degradation.usm_radius,
               "threshold": degradation.usm_threshold} if degradation.sharpen_target else None
    return {"tagger_sha256": tagger_fingerprint(tagger), "usm_sharpen": sharpen,
            "resize": f"whole image, bilinear with antialiasing, to {tagger.input_size}"}


def read_cache(file: Path) -> dict[str, Any]:
    try:
        cache = json.loads(Path(file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TagCacheError(f"The tag cache {file} does not exist: make it with `addsr train tags CONFIG`") from None
    except json.JSONDecodeError as error:
        raise TagCacheError(f"{file} is not a tag cache (not JSON: {error})") from None
    if not isinstance(cache, dict) or cache.get("format") != FORMAT:
        raise TagCacheError(f"{file} is not a tag cache of format {FORMAT}")
    return cache


def load_cached_tags(file: str | Path, images: Sequence[Path]) -> list[str]:
    """The cached tags of ``images``, in order; an error naming the images that have none."""
    file = Path(file)
    tags = read_cache(file)["tags"]
    keys = [cache_key(image, file) for image in images]
    missing = [key for key in keys if key not in tags]
    if missing:
        raise TagCacheError(
            f"{len(missing)} of {len(keys)} HR images have no tags in {file} (e.g. {', '.join(missing[:3])}): "
            "run `addsr train tags` with this config to tag them"
        )
    return [tags[key] for key in keys]


class _WholeImages(Dataset):
    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return pil_to_tensor(load_image(self.paths[index]))[0]


def tagger_input(image: torch.Tensor, data: DataConfig, size: int) -> torch.Tensor:
    """A ``[3, H, W]`` image in ``[0, 1]``, USM-sharpened as the training target is, resized to ``size``."""
    degradation = data.degradation
    image = image.unsqueeze(0)
    if degradation.sharpen_target:
        image = ops.usm_sharpen(image, degradation.usm_weight, degradation.usm_radius, degradation.usm_threshold)
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_tag_cache(
    data: DataConfig, tagger: Tagger, device: torch.device, overwrite: bool = False, progress: bool = True
) -> Path:
    """Tag the USM-sharpened HR images of ``data.hr`` that ``data.tag_cache.file`` lacks and write the file."""
    if data.tag_cache.file is None:
        raise TagCacheError("Set data.tag_cache.file: the JSON file to write the tags to")
    file = Path(data.tag_cache.file)
    images = list_hr_images(data.hr)
    settings = cache_settings(data, tagger)
    tags: dict[str, str] = {}
    if file.exists() and not overwrite:
        cache = read_cache(file)
        if cache["settings"] != settings:
            raise TagCacheError(
                f"{file} was made with other settings ({cache['settings']}); pass --overwrite to replace it, or "
                "set data.tag_cache.file to a new file"
            )
        tags = cache["tags"]
    todo = [image for image in images if cache_key(image, file) not in tags]
    logger.info("%d of %d HR images to tag into %s", len(todo), len(images), file)
    loader = DataLoader(_WholeImages(todo), batch_size=None, num_workers=data.num_workers)
    bar = tqdm(total=len(todo), desc="tagging", unit="image", disable=not progress, dynamic_ncols=True)
    position = 0
    with torch.no_grad():
        for number, batch in enumerate(_batches(iter(loader), data.tag_cache.batch_size), start=1):
            inputs = torch.stack([tagger_input(image.to(device), data, tagger.input_size) for image in batch])
            for text in tagger.tags(inputs):
                tags[cache_key(todo[position], file)] = text
                position += 1
            bar.update(len(batch))
            if number % SAVE_EVERY == 0:
                _save(file, settings, tags)
    bar.close()
    _save(file, settings, tags)
    return file


def tag_hr_images(data: DataConfig, device: str | None = None, overwrite: bool = False, progress: bool = True) -> Path:
    """``addsr train tags``: load ``data.tag_cache.tagger`` (float32, on ``device``; default: a GPU if there is one)
    and write the tag cache."""
    files = data.tag_cache.tagger
    tagger = load_tagger([], files.ram, files.dape, files.tag_list, files.tag_thresholds)
    if tagger is None:
        raise TagCacheError("Set data.tag_cache.tagger.ram (RAM's ram_swin_large_14m.pth) and its tag_list and "
                            "tag_thresholds: the tagger that makes the cached tags")
    device = resolve_device(device)
    return write_tag_cache(data, tagger.to(device), device, overwrite=overwrite, progress=progress)


def _save(file: Path, settings: dict[str, Any], tags: dict[str, str]) -> None:
    text = json.dumps({"format": FORMAT, "settings": settings, "tags": dict(sorted(tags.items()))}, indent=1)
    save_text(text + "\n", file)
