"""Training data: random HR crops read by data-loader workers, then (on the training device) the LR made on the fly
with the Real-ESRGAN degradation, tags from the tagger as prompts, randomly dropped, and their text embeddings.

Every random draw is seeded from the run seed, so the data order and the crops are the same after a resume and
differ between processes: :class:`ShardedSampler` gives process ``rank`` its own share of each epoch's shuffled
order, each item with its own crop seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..degradations import RealESRGANDegradation
from ..io import IMAGE_SUFFIXES, find_images, load_image
from ..tagging import Tagger
from .config import DataConfig, HRSource
from ..draws import uniform


def derive_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (run seed, process, step, ...)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def list_hr_images(sources: Sequence[str | Path | HRSource]) -> list[Path]:
    """Image files of folders (:func:`addsr.io.find_images`: recursively, sorted, hidden ones left out) and of text
    files listing one path a line (relative paths are taken from the list's folder; blank lines and ``#`` comments
    are skipped); an :class:`HRSource` with ``first`` keeps that many of its images."""
    if not sources:
        raise ValueError("No HR image sources: set data.hr to folders of HR images or text files listing them")
    images: list[Path] = []
    for source in sources:
        first = source.first if isinstance(source, HRSource) else None
        images.extend(_source_images(Path(source.path if isinstance(source, HRSource) else source))[:first])
    if not images:
        raise ValueError(f"No HR images found in {[str(s) for s in sources]}; supported suffixes: {IMAGE_SUFFIXES}")
    return images


def _source_images(source: Path) -> list[Path]:
    if source.is_dir():
        return find_images([source], recursive=True)
    if source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
        return [source]
    if source.is_file():
        lines = (line.strip() for line in source.read_text(encoding="utf-8").splitlines())
        return [source.parent / line for line in lines if line and not line.startswith("#")]
    raise FileNotFoundError(f"HR image source {source} does not exist (give folders, images or file lists)")


def random_crop(image: np.ndarray, size: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """A ``size`` x ``size`` crop of an ``[H, W, 3]`` uint8 image, randomly placed and (with ``flip``) horizontally
    flipped, as a ``[3, size, size]`` uint8 tensor. Smaller images are first reflect-padded at the bottom and right
    (as BasicSR's Real-ESRGAN dataset does)."""
    height, width = image.shape[:2]
    if height < size or width < size:
        image = np.pad(image, ((0, max(size - height, 0)), (0, max(size - width, 0)), (0, 0)), mode="reflect")
        height, width = image.shape[:2]
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    crop = torch.from_numpy(np.ascontiguousarray(image[top: top + size, left: left + size])).permute(2, 0, 1)
    if flip and bool(torch.rand(1, generator=generator) < 0.5):
        crop = crop.flip(-1)
    return crop.contiguous()


class HRCropDataset(Dataset):
    """Random square crops of HR images. Items are addressed by ``(index, seed)``; the seed places the crop."""

    def __init__(self, paths: Sequence[Path], crop_size: int, flip: bool = True):
        self.paths = list(paths)
        self.crop_size = crop_size
        self.flip = flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, seed = item
        image = np.asarray(load_image(self.paths[index]))
        return random_crop(image, self.crop_size, self.flip, torch.Generator().manual_seed(seed))


class IndexedHRCropDataset(HRCropDataset):
    """HR crops with the index of their image (to look up its cached tags)."""

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        return super().__getitem__(item), item[0]


class ShardedSampler(Sampler):
    """Endless ``(index, seed)`` items for process ``rank`` of ``world_size``, starting after ``start`` items.

    Epoch ``e`` shuffles all indices with a seed derived from ``(seed, e)``; process ``rank`` takes every
    ``world_size``-th index from position ``rank`` (the last ``len % world_size`` are left out, so processes stay
    in step). Each item's crop seed is derived from ``(seed, e, position)``.
    """

    def __init__(self, num_items: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if num_items < world_size:
            raise ValueError(f"{num_items} HR images cannot be shared by {world_size} processes; add images")
        self.num_items, self.seed, self.rank, self.world_size, self.start = num_items, seed, rank, world_size, start

    @property
    def items_per_epoch(self) -> int:
        return self.num_items // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.items_per_epoch)
        while True:
            shuffle = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(self.num_items, generator=shuffle)
            for local in range(offset, self.items_per_epoch):
                position = self.rank + local * self.world_size
                yield int(order[position]), derive_seed(self.seed, epoch, position)
            epoch, offset = epoch + 1, 0


def hr_dataloader(
    images: Sequence[Path], config: DataConfig, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
    start: int = 0, pin_memory: bool = False,
) -> DataLoader:
    """An endless loader of ``([B, 3, crop, crop] uint8 HR crops, [B] image indices)`` for process ``rank``,
    skipping ``start`` items."""
    dataset = IndexedHRCropDataset(images, config.crop_size, config.flip)
    sampler = ShardedSampler(len(dataset), seed, rank, world_size, start)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=config.num_workers, pin_memory=pin_memory,
        drop_last=True, persistent_workers=config.num_workers > 0,
    )


@dataclass
class TrainingBatch:
    """One micro-batch on the training device; images ``[B, 3, H, W]`` in ``[0, 1]``."""

    hr: torch.Tensor
    """The target: the HR crop the LR was made from (USM-sharpened, as released)."""
    lr: torch.Tensor
    """The LR image, bicubically resized to the HR size: the ControlNet condition."""
    prompts: list[str]
    text_embeddings: torch.Tensor


class TrainingBatchMaker:
    """Turns HR crops into training batches: degrade, resize the LR back up, tag, drop prompts, encode the text.

    The tags come from ``cached_tags`` (one string per HR image, looked up by the crops' image indices) when given,
    else from ``tagger`` on the fly; without either every prompt is empty.
    """

    def __init__(
        self,
        config: DataConfig,
        tokenizer,
        text_encoder: torch.nn.Module,
        tagger: Tagger | None = None,
        cached_tags: Sequence[str] | None = None,
    ):
        self.config = config
        self.degradation = RealESRGANDegradation(config.degradation)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.tagger = tagger
        self.cached_tags = cached_tags

    @torch.no_grad()
    def __call__(
        self, hr: torch.Tensor, generator: torch.Generator | None = None, indices: Sequence[int] | None = None
    ) -> TrainingBatch:
        """``hr``: ``[B, 3, H, W]`` uint8 (or float in ``[0, 1]``) crops on the training device; ``indices``: their
        images' indices (needed with cached tags)."""
        hr = hr.float() / 255 if hr.dtype == torch.uint8 else hr.float()
        small, target = self.degradation(hr, generator)
        lr = F.interpolate(small, size=target.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        prompts = self.prompts(target if self.config.tags_from == "hr" else lr, generator, indices)
        return TrainingBatch(hr=target, lr=lr, prompts=prompts, text_embeddings=self.encode_prompts(prompts))

    def prompts(
        self, images: torch.Tensor, generator: torch.Generator | None, indices: Sequence[int] | None = None
    ) -> list[str]:
        """``"{tags},"`` (the released training's tag files), or ``""`` for dropped samples and without tags."""
        keep = uniform(0.0, 1.0, images.shape[0], generator, images.device) >= self.config.prompt_drop_probability
        prompts = [""] * images.shape[0]
        rows = keep.nonzero().squeeze(1).tolist()
        if not rows:
            return prompts
        if self.cached_tags is not None:
            if indices is None:
                raise ValueError("cached tags are looked up by image index: pass the crops' indices")
            tags = [self.cached_tags[int(indices[row])] for row in rows]
        elif self.tagger is not None:
            tags = self.tagger.tags(images[rows])
        else:
            return prompts
        for row, text in zip(rows, tags):
            prompts[row] = f"{text},"
        return prompts

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text embeddings, padded to the tokenizer's maximum length."""
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(tokens.input_ids.to(device))[0]
