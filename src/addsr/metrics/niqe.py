"""NIQE (Mittal et al. 2013, "Making a completely blind image quality analyzer"), as basicsr's
``calculate_niqe``: Y channel rounded to integers, 96x96 blocks without overlap, two scales."""

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from scipy.ndimage import correlate
from scipy.special import gamma

from .image import Image, prepare
from .imresize import imresize

PARAMS_ENV = "ADDSR_NIQE_PARAMS"
SHIPPED_PARAMS = Path(__file__).with_name("niqe_pris_params.npz")
"""The standard pristine model (MATLAB release, as basicsr 1.4.2 ships it; docs/metrics.md), the default."""
BLOCK_SIZE = 96
# Pixels, local statistics and block features are float32 as in basicsr. MSCN coefficients of flat
# regions depend on rounding, so the precision changes scores; float32 reproduces the MATLAB value
# basicsr quotes for baboon (5.72957) to 1e-5, float64 is 4e-4 off.
WORKING_DTYPE = np.float32

# Candidate shape parameters of the generalised Gaussian, searched as in the MATLAB release.
_ALPHAS = np.arange(0.2, 10.001, 0.001)
_MOMENT_RATIO = gamma(2.0 / _ALPHAS) ** 2 / (gamma(1.0 / _ALPHAS) * gamma(3.0 / _ALPHAS))
# Neighbour offsets (rows, columns) for the pairwise products of MSCN coefficients.
_NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))


@dataclass(frozen=True)
class NiqeParams:
    """The pristine model: mean ``[36]`` and covariance ``[36, 36]`` of natural-image features,
    and the 7x7 Gaussian window for the local normalisation."""

    mu: np.ndarray
    cov: np.ndarray
    window: np.ndarray
    path: str


def resolve_params_path(path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """``path``, else ``$ADDSR_NIQE_PARAMS``, else :data:`SHIPPED_PARAMS`; an error saying what to do when that
    is not a file."""
    options = "--niqe-params (addsr eval), niqe_params_path (eval config) or params_path (Python)"
    if path is not None:
        chosen, advice = path, f"give basicsr's niqe_pris_params.npz as {options}, or none for the shipped copy"
    elif os.environ.get(PARAMS_ENV) is not None:
        chosen, advice = os.environ[PARAMS_ENV], f"point ${PARAMS_ENV} at basicsr's niqe_pris_params.npz or unset it"
    else:
        chosen, advice = SHIPPED_PARAMS, f"reinstall addsr, or give basicsr's file as {options} or ${PARAMS_ENV}"
    resolved = Path(chosen).expanduser().resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"NIQE pristine model not found at {resolved}: {advice}")
    return resolved


def load_niqe_params(path: Optional[Union[str, os.PathLike]] = None) -> NiqeParams:
    """Load the pristine model from ``path``, ``$ADDSR_NIQE_PARAMS`` or the shipped copy."""
    resolved = resolve_params_path(path)
    with np.load(resolved) as data:
        missing = {"mu_pris_param", "cov_pris_param", "gaussian_window"} - set(data.files)
        if missing:
            raise KeyError(f"{resolved} lacks {sorted(missing)}; expected the basicsr niqe_pris_params.npz")
        return NiqeParams(
            mu=np.asarray(data["mu_pris_param"], dtype=np.float64).reshape(-1),
            cov=np.asarray(data["cov_pris_param"], dtype=np.float64),
            window=np.asarray(data["gaussian_window"], dtype=np.float64),
            path=str(resolved),
        )


def fit_aggd(x: np.ndarray) -> tuple[float, float, float]:
    """Shape ``alpha`` and left/right scales of an asymmetric generalised Gaussian (moment matching).

    A flat block has no negative or positive values: its features are NaN, and the NaN-aware pooling
    leaves them out, as basicsr does.
    """
    x = x.ravel()
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        left_std = np.sqrt(np.mean(x[x < 0] ** 2))
        right_std = np.sqrt(np.mean(x[x > 0] ** 2))
        gamma_hat = left_std / right_std
        r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
    r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    alpha = _ALPHAS[np.argmin((_MOMENT_RATIO - r_hat_norm) ** 2)]
    spread = np.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    return float(alpha), float(left_std * spread), float(right_std * spread)


def block_features(block: np.ndarray) -> list[float]:
    """The 18 NIQE features of one block of MSCN coefficients."""
    alpha, beta_l, beta_r = fit_aggd(block)
    features = [alpha, (beta_l + beta_r) / 2.0]
    for offset in _NEIGHBOURS:
        products = block * np.roll(block, offset, axis=(0, 1))
        alpha, beta_l, beta_r = fit_aggd(products)
        mean = (beta_r - beta_l) * gamma(2.0 / alpha) / gamma(1.0 / alpha)
        features += [alpha, mean, beta_l, beta_r]
    return features


def mscn(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients, borders replicated."""
    mu = correlate(img, window, mode="nearest")
    sigma = np.sqrt(np.abs(correlate(img * img, window, mode="nearest") - mu * mu))
    return (img - mu) / (sigma + 1.0)


def scale_features(img: np.ndarray, window: np.ndarray, block: int) -> np.ndarray:
    """Features ``[num_blocks, 18]`` of every non-overlapping ``block`` x ``block`` tile."""
    coeffs = mscn(img, window)
    rows, cols = img.shape[0] // block, img.shape[1] // block
    tiles = [coeffs[r * block:(r + 1) * block, c * block:(c + 1) * block] for r in range(rows) for c in range(cols)]
    return np.array([block_features(t) for t in tiles])


def niqe_of_luma(y: np.ndarray, params: NiqeParams, block_size: int = BLOCK_SIZE) -> float:
    """NIQE of a 2-D image on 0-255 (already converted and rounded as wanted)."""
    y = np.asarray(y, dtype=WORKING_DTYPE)
    rows, cols = y.shape[0] // block_size, y.shape[1] // block_size
    if rows * cols < 2 or block_size % 2:
        raise ValueError(
            f"NIQE needs an even block_size and at least two {block_size}x{block_size} blocks, "
            f"got an image of {y.shape[0]}x{y.shape[1]}"
        )
    y = y[: rows * block_size, : cols * block_size]
    fine = scale_features(y, params.window, block_size)
    half = (imresize(y / 255.0, 0.5) * 255.0).astype(WORKING_DTYPE)
    coarse = scale_features(half, params.window, block_size // 2)
    features = np.concatenate([fine, coarse], axis=1)

    mu = np.nanmean(features, axis=0)
    cov = np.cov(features[~np.isnan(features).any(axis=1)], rowvar=False)
    diff = params.mu - mu
    return float(np.sqrt(diff @ np.linalg.pinv((params.cov + cov) / 2.0) @ diff))


def niqe(
    img: Image,
    crop_border: int = 0,
    params_path: Optional[Union[str, os.PathLike]] = None,
    block_size: int = BLOCK_SIZE,
    color_space: str = "ycbcr",
) -> float:
    """NIQE of one image (lower is better); inputs follow :mod:`addsr.metrics.image`.

    An RGB image is measured on its Y channel (``color_space``: "ycbcr" as basicsr, "yiq" as
    pyiqa's ``niqe``), rounded to integers as the MATLAB release; grey images are rounded as they
    are. The pristine model comes from ``params_path``, else ``$ADDSR_NIQE_PARAMS``, else the copy shipped with
    addsr (:data:`SHIPPED_PARAMS`).
    """
    params = load_niqe_params(params_path)
    y = np.round(prepare(img, crop_border, True, color_space))
    return niqe_of_luma(y, params, block_size)
