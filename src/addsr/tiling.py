"""Tiled inference: overlapping tiles over the latent, Gaussian blending, and a tiled VAE whose group norms use
statistics shared by every tile.

A :class:`TileLayout` covers the latent grid with overlapping square tiles. :class:`TiledDenoiser` runs the
ControlNet-guided U-Net tile by tile (each tile with its own crop of the ControlNet condition) and blends the noise
predictions with Gaussian weights, as the released ``pipeline_addsr.py`` does with its latent tiles.
:class:`TiledVAE` runs the encoder and decoder tile by tile: each tile is widened by a halo for the convolutions'
reach, cropped back and blended, and every group norm normalises with statistics measured once on the whole image
(downscaled to one tile's size), so that tiles share one tone instead of each normalising on its own. With a single
tile, every wrapper calls the untiled function on the whole input, so the output is exactly the untiled output.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn as nn
import torch.nn.functional as F

from .denoiser import decode_latents, encode_moments, latent_factor, predict_noise, sample_latents

GAUSSIAN_SIGMA = 0.1
"""Standard deviation of the blending weights, as a fraction of the tile side (the released variance 0.01)."""
ENCODER_HALO = 32
"""Image pixels added around each encoder tile (the released tiled VAE's encoder padding)."""
DECODER_HALO = 11
"""Latent pixels added around each decoder tile (the released tiled VAE's decoder padding)."""
CPU_TILE = 64
"""``tile="auto"`` on a CPU, in latent pixels (64 LR pixels with the shipped model, 128 with Stable Diffusion 2's
VAE): the fastest size measured with the shipped model (``benchmarks/tiling.py``, docs/inference.md)."""
CPU_UNTILED_SIDE = 160
"""``tile="auto"`` on a CPU leaves latents up to this side untiled: below it one pass is as fast as the tiles."""
CUDA_MEMORY_FRACTION = 0.8
"""Share of a GPU's free memory that ``tile="auto"`` plans to use."""
PROBE_SIDE = 32
"""Latent side of the probe run that measures a GPU's memory use per latent pixel."""


@dataclass(frozen=True)
class Box:
    """A rectangle ``[top, top + height) x [left, left + width)`` on a grid."""

    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    def scaled(self, factor: int) -> Box:
        return Box(self.top * factor, self.left * factor, self.height * factor, self.width * factor)

    def widened(self, margin: int, height: int, width: int) -> Box:
        """This box grown by ``margin`` on every side and shifted back inside a ``height`` x ``width`` grid where it
        would cross its edge, so that every widened tile of a layout has the same size."""
        new_height, new_width = min(height, self.height + 2 * margin), min(width, self.width + 2 * margin)
        top = min(max(0, self.top - margin), height - new_height)
        left = min(max(0, self.left - margin), width - new_width)
        return Box(top, left, new_height, new_width)

    def within(self, outer: Box) -> Box:
        """This box in the coordinates of ``outer``, which contains it."""
        return Box(self.top - outer.top, self.left - outer.left, self.height, self.width)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Offsets of the fewest tiles of side ``tile`` that cover ``length`` with at least ``overlap`` in common,
    spread evenly from one end to the other."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


@dataclass(frozen=True)
class TileLayout:
    """Overlapping square tiles of side ``tile`` covering a ``height`` x ``width`` latent grid."""

    height: int
    width: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.tile < 1 or not 0 <= self.overlap < self.tile:
            raise ValueError(f"tiles need a positive side and an overlap below it, got tile {self.tile}, overlap "
                             f"{self.overlap}")

    @classmethod
    def whole(cls, height: int, width: int) -> TileLayout:
        """One tile covering the whole grid: untiled."""
        return cls(height, width, max(height, width), 0)

    @cached_property
    def boxes(self) -> list[Box]:
        rows = tile_starts(self.height, self.tile, self.overlap)
        cols = tile_starts(self.width, self.tile, self.overlap)
        height, width = min(self.tile, self.height), min(self.tile, self.width)
        return [Box(top, left, height, width) for top in rows for left in cols]

    @property
    def grid(self) -> tuple[int, int]:
        """Tiles per column and per row."""
        return len(tile_starts(self.height, self.tile, self.overlap)), len(tile_starts(self.width, self.tile,
                                                                                        self.overlap))

    @property
    def is_single(self) -> bool:
        return len(self.boxes) == 1


def gaussian_weights(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``[height, width]`` blending weights: a Gaussian centred on the tile, ``GAUSSIAN_SIGMA`` of its side wide."""

    def axis(length: int) -> torch.Tensor:
        positions = torch.arange(length, device=device, dtype=torch.float32)
        return torch.exp(-0.5 * ((positions - (length - 1) / 2) / (GAUSSIAN_SIGMA * length)) ** 2)

    return axis(height)[:, None] * axis(width)[None, :]


class _Canvas:
    """Accumulates weighted tile outputs into one image and divides by the summed weights at the end."""

    def __init__(self, like: torch.Tensor, channels: int, height: int, width: int):
        self.total = torch.zeros(like.shape[0], channels, height, width, device=like.device, dtype=torch.float32)
        self.weight = torch.zeros(1, 1, height, width, device=like.device, dtype=torch.float32)

    def add(self, part: torch.Tensor, box: Box) -> None:
        weights = gaussian_weights(box.height, box.width, part.device)
        rows, cols = box.slices
        self.total[..., rows, cols] += part.float() * weights
        self.weight[..., rows, cols] += weights

    def result(self, dtype: torch.dtype) -> torch.Tensor:
        return self.total.div_(self.weight).to(dtype)


def _batched(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


Denoise = Callable[[torch.Tensor, int, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""``denoise(latents, timestep, condition, image_embeddings) -> epsilon``; ``latents`` may hold several tiles of
the batch one after another (tile-major), which the callable must accept."""


class TiledDenoiser:
    """``denoise`` run tile by tile over the latent, its noise predictions blended with Gaussian weights.

    Each tile gets its own crop of the ControlNet condition (``factor`` condition pixels per latent pixel) and the
    whole image's embeddings; ``batch_size`` tiles go through the network at once. ``progress`` is called with the
    number of tiles done after each batch."""

    def __init__(self, denoise: Denoise, layout: TileLayout, factor: int, batch_size: int = 1,
                 progress: Callable[[int], object] | None = None):
        self.denoise, self.layout, self.factor = denoise, layout, factor
        self.batch_size, self.progress = batch_size, progress or (lambda done: None)

    def __call__(self, latents: torch.Tensor, timestep: int, condition: torch.Tensor,
                 image_embeddings: torch.Tensor | None) -> torch.Tensor:
        if self.layout.is_single:
            noise = self.denoise(latents, timestep, condition, image_embeddings)
            self.progress(1)
            return noise
        canvas = _Canvas(latents, latents.shape[1], *latents.shape[-2:])
        for boxes in _batched(self.layout.boxes, self.batch_size):
            tiles = torch.cat([latents[(..., *box.slices)] for box in boxes])
            conditions = torch.cat([condition[(..., *box.scaled(self.factor).slices)] for box in boxes])
            noise = self.denoise(tiles, timestep, conditions, image_embeddings)
            for box, part in zip(boxes, noise.chunk(len(boxes))):
                canvas.add(part, box)
            self.progress(len(boxes))
        return canvas.result(latents.dtype)


def _group_statistics(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance ``[B, groups]`` of ``x`` ``[B, C, ...]`` per sample and channel group."""
    flat = x.float().reshape(x.shape[0], groups, -1)
    return flat.mean(dim=-1), flat.var(dim=-1, unbiased=False)


def _normalise(norm: nn.GroupNorm, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``norm`` applied to ``x`` with the given group statistics instead of ``x``'s own, as one scale and shift
    per channel."""
    per_group = x.shape[1] // norm.num_groups
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_group, dim=1)
    shift = -mean.repeat_interleave(per_group, dim=1) * scale
    if norm.affine:
        scale, shift = scale * norm.weight.float(), shift * norm.weight.float() + norm.bias.float()
    channel_shape = (*scale.shape, *([1] * (x.ndim - 2)))
    return torch.addcmul(shift.view(channel_shape).to(x.dtype), x, scale.view(channel_shape).to(x.dtype))


@contextmanager
def _recorded_group_norms(module: nn.Module) -> Iterator[dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]]]:
    """Record the input statistics of every group norm in ``module`` during one forward pass."""
    statistics: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(norm: nn.GroupNorm, args: tuple) -> None:
        if norm in statistics:
            raise RuntimeError("a group norm ran twice in one pass; tiled statistics assume one call per norm")
        statistics[norm] = _group_statistics(args[0], norm.num_groups)

    handles = [m.register_forward_pre_hook(record) for m in module.modules() if isinstance(m, nn.GroupNorm)]
    try:
        yield statistics
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _shared_group_norms(statistics: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Make every recorded group norm normalise with its recorded statistics."""
    for norm, (mean, var) in statistics.items():
        norm.forward = lambda x, norm=norm, mean=mean, var=var: _normalise(norm, x, mean, var)
    try:
        yield
    finally:
        for norm in statistics:
            del norm.forward


def _downscaled(x: torch.Tensor, max_area: int) -> torch.Tensor:
    """``x`` shrunk (antialiased bilinear, aspect kept) to at most ``max_area`` pixels; unchanged if it fits."""
    height, width = x.shape[-2:]
    scale = math.sqrt(max_area / (height * width))
    if scale >= 1:
        return x
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False).to(x.dtype)


class TiledVAE:
    """The VAE run tile by tile on a :class:`TileLayout` of the latent grid, with shared group-norm statistics.

    Encoder tiles are widened by ``ENCODER_HALO`` image pixels and decoder tiles by ``DECODER_HALO`` latent pixels
    (shifted inwards at the image's edges, so all have one size), then cropped back and blended with Gaussian
    weights. Every group norm uses the
    statistics of one pass over the whole input shrunk to the area of a widened tile (diffusers' ``enable_tiling``
    normalises each tile on its own, which shows as tone steps between tiles). The attention in the VAE's middle
    block sees one tile at a time."""

    def __init__(self, vae: nn.Module, layout: TileLayout):
        self.vae, self.layout, self.factor = vae, layout, latent_factor(vae)

    def encode(self, images: torch.Tensor, generator: torch.Generator | list | None) -> torch.Tensor:
        """Scaled float32 latents of ``[0, 1]`` images, drawn from the blended posterior in one global draw."""
        if self.layout.is_single:
            moments = encode_moments(self.vae, images)
        else:
            halo = ENCODER_HALO // self.factor
            moments = self._run(lambda x: encode_moments(self.vae, x), self.vae.encoder, images, self.factor, 1, halo)
        return sample_latents(self.vae, moments, generator)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` float32 images of scaled latents."""
        if self.layout.is_single:
            return decode_latents(self.vae, latents)
        return self._run(lambda z: decode_latents(self.vae, z), self.vae.decoder, latents, 1, self.factor,
                         DECODER_HALO)

    def _run(self, function: Callable[[torch.Tensor], torch.Tensor], network: nn.Module, x: torch.Tensor,
             in_scale: int, out_scale: int, halo: int) -> torch.Tensor:
        """``function`` over the layout's tiles of ``x`` (``in_scale`` pixels of ``x`` per latent pixel), with
        the group norms of ``network`` fixed to whole-image statistics; outputs have ``out_scale`` pixels per
        latent pixel."""
        layout = self.layout
        tile_area = (min(layout.tile, layout.height) + 2 * halo) * (min(layout.tile, layout.width) + 2 * halo)
        with _recorded_group_norms(network) as statistics:
            function(_downscaled(x, tile_area * in_scale**2))
        canvas = None
        with _shared_group_norms(statistics):
            for box in layout.boxes:
                outer = box.widened(halo, layout.height, layout.width)
                part = function(x[(..., *outer.scaled(in_scale).slices)])
                part = part[(..., *box.within(outer).scaled(out_scale).slices)]
                if canvas is None:
                    canvas = _Canvas(part, part.shape[1], layout.height * out_scale, layout.width * out_scale)
                canvas.add(part, box.scaled(out_scale))
        return canvas.result(torch.float32)


def check_tiling(tile: int | str, overlap: int | None) -> None:
    """``tile`` is ``"auto"``, 0 (untiled) or a side in LR pixels; ``overlap`` is None or under half the tile."""
    if tile != "auto" and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 0):
        raise ValueError(f"tile must be 'auto', 0 (untiled) or a side in LR pixels, got {tile!r}")
    if overlap is not None and (overlap < 0 or (tile != "auto" and tile and overlap >= tile / 2)):
        raise ValueError(f"tile_overlap must be at least 0 and under half the tile ({tile}), got {overlap}")


def parse_tile(text: str) -> int | str:
    """A tile setting as written on a command line or a form: ``auto`` or a whole number of LR pixels."""
    text = text.strip().lower()
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"tile must be 'auto', 0 (untiled) or a side in LR pixels, got {text!r}") from None


def auto_tile_size(pipe, latent_size: tuple[int, int], latent_per_lr: float, batch: int = 1) -> int:
    """``tile="auto"`` in LR input pixels (0: untiled) for an ``AddSRPipeline`` and a latent of ``latent_size``
    (``latent_per_lr`` latent pixels per LR pixel). On CUDA, the largest square tile whose measured memory fits
    ``CUDA_MEMORY_FRACTION`` of the free memory. Elsewhere the cost of attention, not memory, sets the best size:
    untiled up to ``CPU_UNTILED_SIDE``, else ``CPU_TILE``."""
    if pipe.device.type != "cuda":
        return 0 if max(latent_size) <= CPU_UNTILED_SIDE else round(CPU_TILE / latent_per_lr)
    latent_side = largest_fitting_side(_cuda_budget(pipe), _cuda_bytes_per_latent_pixel(pipe, batch))
    return round(latent_side / latent_per_lr)


def tiles_per_batch(pipe, layout: TileLayout, batch: int = 1) -> int:
    """How many tiles go through the network at once: on CUDA as many as fit the free memory, elsewhere one (a
    CPU gains nothing from batching)."""
    if pipe.device.type != "cuda" or layout.is_single:
        return 1
    per_tile = _cuda_bytes_per_latent_pixel(pipe, batch) * layout.tile**2
    return max(1, min(len(layout.boxes), int(_cuda_budget(pipe) // per_tile)))


def largest_fitting_side(budget_bytes: float, bytes_per_pixel: float) -> int:
    """The side of the largest square whose pixels cost at most ``budget_bytes`` (at least 8)."""
    return max(8, math.isqrt(int(budget_bytes / bytes_per_pixel)))


def _cuda_budget(pipe) -> float:
    free, _ = torch.cuda.mem_get_info(pipe.device)
    return CUDA_MEMORY_FRACTION * free


_probes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def _cuda_bytes_per_latent_pixel(pipe, batch: int) -> float:
    """Peak GPU memory per latent pixel of one denoising call and one decode, measured once per pipeline, dtype
    and batch on a small probe."""
    key = (pipe.dtype, batch)
    if key in _probes.setdefault(pipe.unet, {}):
        return _probes[pipe.unet][key]
    factor, channels = latent_factor(pipe.vae), pipe.unet.config.in_channels
    latents = torch.zeros(batch, channels, PROBE_SIDE, PROBE_SIDE, device=pipe.device, dtype=pipe.dtype)
    condition = torch.zeros(batch, 3, PROBE_SIDE * factor, PROBE_SIDE * factor, device=pipe.device)
    text = pipe.encode_prompts([""] * batch)
    embeds = pipe.image_embeddings(condition, "bicubic")
    torch.cuda.synchronize(pipe.device)
    baseline = torch.cuda.memory_allocated(pipe.device)
    torch.cuda.reset_peak_memory_stats(pipe.device)
    predict_noise(pipe.unet, pipe.controlnet, latents, 999, text, condition, embeds)
    decode_latents(pipe.vae, latents)
    peak = torch.cuda.max_memory_allocated(pipe.device) - baseline
    _probes[pipe.unet][key] = peak / PROBE_SIDE**2
    return _probes[pipe.unet][key]
