"""JPEG compression: a batched torch version with per-sample quality, and the standard codec (PIL/libjpeg).

The torch version follows baseline JPEG: JFIF YCbCr, 4:2:0 chroma subsampling (2x2 mean), 8x8 DCT, quantisation by
the standard (ITU-T T.81 Annex K) tables scaled by quality as libjpeg does, and decoding with libjpeg's "fancy"
(triangle) chroma upsampling. Entropy coding is lossless and left out.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4

_RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


def quantization_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``[B, 8, 8]`` luma and chroma tables for (possibly fractional) qualities in ``[1, 100]``."""
    quality = quality.to(torch.float64).clamp(1, 100).view(-1, 1, 1)
    percent = torch.where(quality < 50, 5000.0 / quality, 200.0 - 2.0 * quality)

    def scaled(table) -> torch.Tensor:
        base = torch.tensor(table, dtype=torch.float64, device=quality.device)
        return torch.floor((base * percent + 50.0) / 100.0).clamp(1, 255).float()

    return scaled(LUMA_TABLE), scaled(CHROMA_TABLE)


def _dct_matrix(device: torch.device) -> torch.Tensor:
    """Orthonormal 8-point DCT-II matrix (rows are frequencies); the 2-D JPEG DCT is ``D @ block @ D.T``."""
    index = torch.arange(8, dtype=torch.float64, device=device)
    matrix = torch.cos((2 * index.view(1, 8) + 1) * index.view(8, 1) * math.pi / 16) * 0.5
    matrix[0] /= math.sqrt(2)
    return matrix.float()


def _to_blocks(plane: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` -> ``[B, H/8, W/8, 8, 8]``."""
    batch, height, width = plane.shape
    return plane.view(batch, height // 8, 8, width // 8, 8).transpose(2, 3)


def _from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    batch, rows, cols = blocks.shape[:3]
    return blocks.transpose(2, 3).reshape(batch, rows * 8, cols * 8)


def _quantize_plane(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Level shift, DCT, quantise and dequantise, inverse DCT of a ``[B, H, W]`` plane on the 0-255 scale."""
    table = table.view(-1, 1, 1, 8, 8)
    coefficients = dct @ (_to_blocks(plane) - 128.0) @ dct.T
    coefficients = torch.round(coefficients / table) * table
    return _from_blocks(dct.T @ coefficients @ dct) + 128.0


def _colour_transform(images: torch.Tensor, matrix) -> torch.Tensor:
    matrix = torch.tensor(matrix, dtype=images.dtype, device=images.device)
    return torch.einsum("ij,bjhw->bihw", matrix, images)


def jpeg_compress(images: torch.Tensor, quality: torch.Tensor | float) -> torch.Tensor:
    """Compress and decompress ``[B, 3, H, W]`` RGB images in ``[0, 1]``; ``quality`` is ``[B]`` or a scalar.

    Values are clamped to ``[0, 1]`` first. Sizes that are not multiples of 16 are padded by edge replication, as
    encoders do, and cropped back. The output is not rounded to 8 bits.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"JPEG expects [B, 3, H, W] RGB images, got shape {tuple(images.shape)}")
    batch, _, height, width = images.shape
    quality = torch.as_tensor(quality, dtype=torch.float32, device=images.device).expand(batch)
    luma_table, chroma_table = quantization_tables(quality)
    dct = _dct_matrix(images.device)

    padded = F.pad(images.float().clamp(0, 1) * 255.0, (0, -width % 16, 0, -height % 16), mode="replicate")
    offset = torch.tensor([0.0, 128.0, 128.0], device=images.device).view(1, 3, 1, 1)
    ycbcr = _colour_transform(padded, _RGB_TO_YCBCR) + offset
    luma = _quantize_plane(ycbcr[:, 0], luma_table, dct)
    chroma = F.avg_pool2d(ycbcr[:, 1:], kernel_size=2)
    chroma = torch.stack([_quantize_plane(chroma[:, c], chroma_table, dct) for c in range(2)], dim=1)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)

    decoded = torch.cat([luma.unsqueeze(1), chroma - 128.0], dim=1)
    rgb = _colour_transform(decoded, _YCBCR_TO_RGB)
    return (rgb[:, :, :height, :width] / 255.0).clamp(0, 1).to(images.dtype)


def pil_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Round-trip 8-bit-rounded images through PIL's (libjpeg's) baseline JPEG at integer ``quality``, 4:2:0."""
    decoded = []
    for array in (images.detach().float().clamp(0, 1) * 255.0).round().byte().permute(0, 2, 3, 1).cpu().numpy():
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality), subsampling=2)
        buffer.seek(0)
        with Image.open(buffer) as image:
            decoded.append(torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0))
    return torch.stack(decoded).permute(0, 3, 1, 2).to(device=images.device, dtype=images.dtype)
