from pathlib import Path

import pytest
import torch
from PIL import Image

from addsr import AddSRPipeline
from addsr.denoiser import decode_latents, encode_moments
from addsr.io import pil_to_tensor
from addsr.tiling import (
    Box, TiledDenoiser, TiledVAE, TileLayout, _recorded_group_norms, _shared_group_norms, gaussian_weights,
    largest_fitting_side, tile_starts,
)

from conftest import tiny_vae

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"


def lr_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random image (a blurred, upsampled noise field), so that seams would stand out against it."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 4 + 1, width // 4 + 1, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").clamp(0, 1)


def run(pipe, image, seed=0, **kwargs):
    return pipe(image, generator=torch.Generator().manual_seed(seed), process_size=32, output_type="pt", **kwargs)


def seam_ratio(tiled: torch.Tensor, reference: torch.Tensor, borders: set[int], axis: int) -> float:
    """How much larger the jump of ``tiled - reference`` is across the given borders than across a typical line.

    A tile border that leaves a seam shows as a step in the difference to the untiled output exactly there."""
    difference = (tiled - reference).movedim(axis, -1)
    jumps = (difference[..., 1:] - difference[..., :-1]).abs().mean(dim=tuple(range(difference.ndim - 1)))
    at_borders = jumps[[border - 1 for border in sorted(borders)]]
    return (at_borders.max() / jumps.median()).item()


@pytest.mark.parametrize("length, tile, overlap", [(10, 16, 4), (16, 16, 4), (17, 16, 4), (100, 16, 4), (63, 20, 7)])
def test_tiles_cover_the_length_with_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    side = min(tile, length)
    assert starts[0] == 0 and starts[-1] + side == length
    assert all(0 < b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    fewer = len(starts) - 1
    assert fewer == 0 or (fewer - 1) * (tile - overlap) + tile < length  # no tile could be left out


def test_layout_boxes_cover_the_grid_and_whole_is_one_tile():
    layout = TileLayout(30, 45, 16, 4)
    covered = torch.zeros(30, 45)
    for box in layout.boxes:
        covered[box.slices] += 1
    assert covered.min() >= 1 and layout.grid == (3, 4) and len(layout.boxes) == 12
    assert TileLayout.whole(30, 45).is_single
    with pytest.raises(ValueError, match="overlap"):
        TileLayout(30, 45, 16, 16)


def test_widened_boxes_keep_one_size_inside_the_grid():
    assert Box(0, 10, 8, 8).widened(3, 20, 20) == Box(0, 6, 14, 14)  # shifted away from the top and right edges
    assert Box(12, 12, 8, 8).widened(3, 20, 20) == Box(6, 6, 14, 14)
    assert Box(0, 0, 8, 8).widened(3, 10, 20) == Box(0, 0, 10, 14)  # no more room than the grid
    assert Box(2, 12, 8, 8).within(Box(0, 6, 14, 14)) == Box(2, 6, 8, 8)


def test_gaussian_weights_peak_in_the_middle_and_are_symmetric():
    weights = gaussian_weights(9, 12)
    assert weights.shape == (9, 12)
    assert torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.flip(1))
    assert weights[4, 5] == weights.max() and weights[0, 0] < 1e-5 * weights.max()


def test_tiled_denoiser_blends_a_pointwise_function_exactly_and_crops_the_condition():
    layout = TileLayout(20, 28, 8, 3)
    seen = []

    def denoise(latents, timestep, condition, embeds):
        seen.append((latents.shape, condition.shape))
        return latents * 2 + condition[..., ::4, ::4].mean(1, keepdim=True)

    latents = torch.randn(2, 4, 20, 28)
    condition = torch.rand(2, 3, 80, 112)
    done = []
    blended = TiledDenoiser(denoise, layout, factor=4, batch_size=5, progress=done.append)(latents, 999, condition, None)
    torch.testing.assert_close(blended, latents * 2 + condition[..., ::4, ::4].mean(1, keepdim=True))
    assert seen[0] == ((10, 4, 8, 8), (10, 3, 32, 32))  # five tiles of two images per call
    assert sum(done) == len(layout.boxes)


def test_one_tile_covering_the_image_gives_exactly_the_untiled_output(tiny_pipe):
    image = lr_image(20, 28)
    untiled = run(tiny_pipe, image, num_steps=2, tile=0).images
    assert torch.equal(run(tiny_pipe, image, num_steps=2, tile=28).images, untiled)
    assert torch.equal(run(tiny_pipe, image, num_steps=2).images, untiled)  # "auto" on a CPU: one tile here


def transition_lines(layout: TileLayout, factor: int) -> set[int]:
    """Output columns where one tile hands over to the next: tile edges, and midway between tile centres (where
    the Gaussian weights cross)."""
    starts = sorted({box.left for box in layout.boxes})
    edges = {edge for box in layout.boxes for edge in (box.left, box.left + box.width)} - {0, layout.width}
    middles = {(a + b) // 2 + layout.tile // 2 for a, b in zip(starts, starts[1:])}
    return {line * factor for line in edges | middles}


def test_the_default_model_leaves_no_seams_at_3x3_tiles():
    """On a real photo with the shipped model, where diffusers' way (each tile its own group norms, no halo, no
    blending) leaves seams of about 6x the typical step: tiled output has none and stays closer to the untiled
    output than another seed is."""
    pipe = AddSRPipeline.from_pretrained(device="cpu")
    pipe.progress_bar = False
    image = pil_to_tensor(Image.open(EXAMPLE))[..., 32:96, 32:96]

    def upscale(seed: int = 0, **kwargs) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return pipe(image, num_steps=2, process_size=128, generator=generator, output_type="pt", **kwargs).images

    untiled, tiled = upscale(tile=0), upscale(tile=28, tile_overlap=6)
    layout = pipe.tile_layout((64, 64), (64, 64), 28, 6)
    assert layout.grid == (3, 3)
    lines = transition_lines(layout, factor=4)
    assert max(seam_ratio(tiled, untiled, lines, axis) for axis in (-1, -2)) < 1.6
    assert (tiled - untiled).abs().mean() < 0.6 * (upscale(seed=1, tile=0) - untiled).abs().mean()


def test_group_norms_share_the_whole_image_statistics():
    """A network without spatial mixing gives, tile by tile, exactly its untiled output once the group norms use
    the statistics recorded on the whole image."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.GroupNorm(4, 8), torch.nn.SiLU(),
                                  torch.nn.Conv2d(8, 8, 1), torch.nn.GroupNorm(2, 8))
    image = lr_image(32, 48)
    image[..., :24] *= 0.2  # tiles of very different brightness: their own statistics would differ
    whole = network(image)
    with _recorded_group_norms(network) as statistics:
        network(image)
    assert len(statistics) == 2
    with _shared_group_norms(statistics):
        tiles = [network(image[..., :, :24]), network(image[..., :, 24:])]
    torch.testing.assert_close(torch.cat(tiles, dim=-1), whole)
    own = torch.cat([network(image[..., :, :24]), network(image[..., :, 24:])], dim=-1)  # hooks are gone again
    assert (own - whole).abs().max() > 0.1


def test_small_tiles_leave_no_seams_and_stay_close_to_the_untiled_output(plain_pipe):
    image = lr_image(48, 48)
    calls = []
    plain_pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))
    untiled = run(plain_pipe, image, num_steps=2, tile=0).images
    calls.clear()
    tiled = run(plain_pipe, image, num_steps=2, tile=20, tile_overlap=6).images
    layout = plain_pipe.tile_layout((48, 48), (24, 24), 20, 6)
    assert layout.grid == (3, 3) and len(calls) == 2 * 9
    for axis in (-1, -2):
        assert seam_ratio(tiled, untiled, transition_lines(layout, factor=8), axis) < 3
    other_seed = run(plain_pipe, image, seed=1, num_steps=2, tile=0).images
    assert (tiled - untiled).abs().mean() < 0.25 * (other_seed - untiled).abs().mean()


def test_tiling_draws_the_same_random_numbers_as_untiled(plain_pipe):
    image = lr_image(48, 48)
    generators = [torch.Generator().manual_seed(0) for _ in range(2)]
    plain_pipe(image, num_steps=3, tile=0, generator=generators[0], process_size=32)
    plain_pipe(image, num_steps=3, tile=20, tile_overlap=6, generator=generators[1], process_size=32)
    assert torch.equal(generators[0].get_state(), generators[1].get_state())


def test_tiled_vae_shares_group_norm_statistics_across_tiles():
    vae = tiny_vae().eval()
    images = lr_image(96, 144, seed=1)
    layout = TileLayout(12, 18, 8, 2)
    with torch.no_grad():
        latents = encode_moments(vae, images)[:, :4] * vae.config.scaling_factor
        untiled = decode_latents(vae, latents)
        tiled = TiledVAE(vae, layout).decode(latents)
        vae.tile_sample_min_size, vae.tile_latent_min_size = 64, 8  # diffusers' tiling: each tile its own norm
        vae.enable_tiling()
        per_tile = decode_latents(vae, latents)
    assert tiled.shape == untiled.shape
    assert (tiled - untiled).abs().mean() < 0.5 * (per_tile - untiled).abs().mean()


def test_tiled_vae_encodes_close_to_untiled_and_samples_in_one_draw():
    vae = tiny_vae().eval()
    images = lr_image(96, 128, seed=2)
    with torch.no_grad():
        untiled = TiledVAE(vae, TileLayout.whole(12, 16)).encode(images, torch.Generator().manual_seed(0))
        tiled = TiledVAE(vae, TileLayout(12, 16, 6, 2)).encode(images, torch.Generator().manual_seed(0))
    assert tiled.shape == untiled.shape == (1, 4, 12, 16)
    assert (tiled - untiled).abs().mean() < 0.1 * untiled.abs().mean()


def test_bad_tile_arguments_are_refused(tiny_pipe):
    with pytest.raises(ValueError, match="tile must be"):
        run(tiny_pipe, lr_image(20, 28), tile=-1)
    with pytest.raises(ValueError, match="tile_overlap"):
        run(tiny_pipe, lr_image(20, 28), tile=16, tile_overlap=8)


def test_largest_fitting_side():
    assert largest_fitting_side(100 * 100 * 1000.0, 1000.0) == 100
    assert largest_fitting_side(10.0, 1000.0) == 8


def test_auto_tiles_large_latents_on_a_cpu_and_leaves_small_ones_whole(tiny_pipe):
    from addsr.tiling import CPU_TILE, CPU_UNTILED_SIDE

    large = CPU_UNTILED_SIDE + 8
    layout = tiny_pipe.tile_layout((large // 2, large // 2), (large, large), "auto")
    assert layout.tile == CPU_TILE and layout.overlap == CPU_TILE // 4 and not layout.is_single
    assert tiny_pipe.tile_layout((CPU_UNTILED_SIDE // 2,) * 2, (CPU_UNTILED_SIDE,) * 2, "auto").is_single
