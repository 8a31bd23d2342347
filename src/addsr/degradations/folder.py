"""Degrade a folder of HR images into paired ``hr/`` and ``lr/`` PNG folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..io import ImageReadError, NoImagesError, find_images, read_image, save_image, tensor_to_pil
from .config import RealESRGANDegradationConfig
from .paper import PAPER_DEGRADATIONS, paper_degradation
from .realesrgan import RealESRGANDegradation

DEGRADATION_KINDS = ("realesrgan", *PAPER_DEGRADATIONS)


class DegradeFolderError(RuntimeError):
    """Some images could not be degraded; the others were written."""

    def __init__(self, failures: list[str], written: list[Path]):
        lines = "\n  ".join(failures)
        super().__init__(f"{len(failures)} image(s) skipped, {len(written)} pair(s) written:\n  {lines}")
        self.failures = failures
        self.written = written


def image_seed(seed: int, name: str) -> int:
    """A per-image seed from the run seed and the file name, independent of the folder's other files."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def center_crop(image: torch.Tensor, crop: int | None, scale: int) -> torch.Tensor:
    """The centred ``crop x crop`` patch; with ``crop=None`` the largest centred one with sides divisible by scale."""
    height, width = image.shape[-2:]
    if crop is None:
        crop_h, crop_w = height - height % scale, width - width % scale
    elif height < crop or width < crop:
        raise ValueError(f"is {width}x{height}, smaller than the crop {crop}; use a smaller crop or none")
    else:
        crop_h = crop_w = crop
    if crop_h == 0 or crop_w == 0:
        raise ValueError(f"is {width}x{height}, smaller than the scale {scale}")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image[..., top : top + crop_h, left : left + crop_w]


def _check_arguments(hr_dir: Path, kind: str, crop: int | None, scale: int, config) -> list[Path]:
    if kind not in DEGRADATION_KINDS:
        raise ValueError(f"Unknown degradation kind {kind!r}: choose one of {', '.join(DEGRADATION_KINDS)}")
    if scale < 1 or (crop is not None and (crop < scale or crop % scale)):
        raise ValueError(f"crop ({crop}) must be a positive multiple of the scale ({scale})")
    if config is not None and config.scale != scale:
        raise ValueError(f"config.scale ({config.scale}) differs from scale ({scale}); make them equal")
    if not hr_dir.is_dir():
        raise ValueError(f"HR folder {hr_dir} does not exist or is not a folder")
    images = find_images([hr_dir])
    if not images:
        raise NoImagesError([hr_dir])
    stems = [path.stem for path in images]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        names = ", ".join(duplicates)
        raise ValueError(f"Images in {hr_dir} differ only by suffix ({names}); outputs would collide; rename them")
    return images


def degrade_folder(
    hr_dir: str | Path,
    out_dir: str | Path,
    kind: str = "realesrgan",
    crop: int | None = 512,
    seed: int = 0,
    scale: int = 4,
    device: str | torch.device = "cpu",
    config: RealESRGANDegradationConfig | None = None,
) -> list[Path]:
    """Write ``out_dir/hr/NAME.png`` and ``out_dir/lr/NAME.png`` for every image ``NAME.*`` in ``hr_dir``.

    ``kind`` is ``realesrgan`` (random second-order degradation; the HR written is the USM-sharpened target when
    ``config.sharpen_target``) or one of the paper's fixed test degradations. Each image is centre-cropped to
    ``crop`` (``None``: to a multiple of ``scale``) and degraded with a CPU generator seeded from ``seed`` and its
    name, so results do not depend on the other files or on ``device``. Returns the LR paths written; images that
    cannot be read or are too small are skipped and reported together at the end in a :class:`DegradeFolderError`.
    """
    hr_dir, out_dir = Path(hr_dir), Path(out_dir)
    images = _check_arguments(hr_dir, kind, crop, scale, config)
    config = config if config is not None else RealESRGANDegradationConfig(scale=scale)
    realesrgan = RealESRGANDegradation(config) if kind == "realesrgan" else None
    written: list[Path] = []
    failures: list[str] = []
    for path in tqdm(images, desc=f"degrade ({kind})", unit="image"):
        try:
            hr = center_crop(read_image(path).color(), crop, scale).to(device)
        except ImageReadError as error:
            failures.append(str(error))
            continue
        except ValueError as error:
            failures.append(f"{path}: {error}")
            continue
        generator = torch.Generator().manual_seed(image_seed(seed, path.name))
        if realesrgan is not None:
            lr, hr = realesrgan(hr, generator)
        else:
            lr = paper_degradation(hr, kind, generator, scale)
        save_image(tensor_to_pil(hr)[0], out_dir / "hr" / f"{path.stem}.png")
        written.append(save_image(tensor_to_pil(lr)[0], out_dir / "lr" / f"{path.stem}.png"))
    if failures:
        raise DegradeFolderError(failures, written)
    return written
