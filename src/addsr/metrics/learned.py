"""Learned IQA metrics (LPIPS, DISTS, MANIQA, MUSIQ, CLIPIQA) through pyiqa, from local weights only.

pyiqa is the optional extra ``addsr[iqa]``. Weights are never downloaded: every file a metric
needs is checked before pyiqa builds it, and while it builds, every download path pyiqa, torchvision,
timm or CLIP could take raises :class:`MetricUnavailable` instead. Weight files live in one folder
laid out as the torch hub cache (``$ADDSR_IQA_WEIGHTS``, else ``torch.hub.get_dir()``)::

    <weights_dir>/pyiqa/<pyiqa checkpoint>      e.g. LPIPS_v0.1_alex-df73285e.pth
    <weights_dir>/checkpoints/<torchvision file> e.g. alexnet-owt-7be5be79.pth
    <weights_dir>/clip/RN50.pt

and MANIQA's ViT backbone in the Hugging Face cache (``HF_HUB_CACHE``), as timm stores it.
"""

import importlib
import os
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .image import Image, to_tensor
from .result import MetricResult

WEIGHTS_ENV = "ADDSR_IQA_WEIGHTS"
INSTALL_HINT = "pip install 'addsr[iqa]'"


class MetricUnavailable(RuntimeError):
    """A learned metric cannot run here: pyiqa is not installed or its weights are not local."""


@dataclass(frozen=True)
class LearnedMetricSpec:
    """How to build one learned metric with pyiqa, and the local files it needs."""

    pyiqa_name: str
    full_reference: bool
    weight_files: tuple[str, ...]  # relative to the weights folder (torch hub layout)
    hf_model: Optional[str] = None  # Hugging Face repo of a timm backbone, looked up in the HF cache


LEARNED_METRICS: dict[str, LearnedMetricSpec] = {
    "lpips": LearnedMetricSpec(
        "lpips", True, ("pyiqa/LPIPS_v0.1_alex-df73285e.pth", "checkpoints/alexnet-owt-7be5be79.pth")
    ),
    "dists": LearnedMetricSpec(
        "dists", True, ("pyiqa/DISTS_weights-f5e65c96.pth", "checkpoints/vgg16-397923af.pth")
    ),
    "maniqa-pipal": LearnedMetricSpec(
        "maniqa-pipal",
        False,
        ("pyiqa/MANIQA_PIPAL-ae6d356b.pth",),
        hf_model="timm/vit_base_patch8_224.augreg2_in21k_ft_in1k",
    ),
    "musiq": LearnedMetricSpec("musiq", False, ("pyiqa/musiq_koniq_ckpt-e95806b9.pth",)),
    "clipiqa": LearnedMetricSpec("clipiqa", False, ("clip/RN50.pt",)),
}


def import_pyiqa() -> Any:
    """The pyiqa module, or :class:`MetricUnavailable` saying how to install it."""
    try:
        return importlib.import_module("pyiqa")
    except ImportError as err:
        raise MetricUnavailable(f"learned metrics need pyiqa, which is not importable ({err}); {INSTALL_HINT}") from err


def weights_dir(path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """``path``, else ``$ADDSR_IQA_WEIGHTS``, else the torch hub cache."""
    chosen = path if path is not None else os.environ.get(WEIGHTS_ENV) or torch.hub.get_dir()
    return Path(chosen).expanduser()


def _hf_cached(repo_id: str) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


def missing_weights(spec: LearnedMetricSpec, folder: Path) -> list[str]:
    """Descriptions of the files ``spec`` needs that are not on this machine."""
    missing = [str(folder / name) for name in spec.weight_files if not (folder / name).is_file()]
    if spec.hf_model is not None and _hf_cached(spec.hf_model) is None:
        missing.append(f"Hugging Face cache entry for {spec.hf_model} (model.safetensors)")
    return missing


def _refuse_download(url: Any, *args: Any, **kwargs: Any) -> None:
    target = f" (to {args[0]})" if args else ""
    raise MetricUnavailable(f"a weight file is missing: refusing to download {url}{target}; place it there by hand")


@contextmanager
def _patched(owner: Any, attribute: str, value: Any) -> Iterator[None]:
    previous = getattr(owner, attribute)
    setattr(owner, attribute, value)
    try:
        yield
    finally:
        setattr(owner, attribute, previous)


@contextmanager
def local_weights_only(folder: Path) -> Iterator[None]:
    """Point torch hub and pyiqa at ``folder`` and turn every download into :class:`MetricUnavailable`."""
    previous_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(folder))
    try:
        with ExitStack() as stack:
            stack.enter_context(_patched(torch.hub, "download_url_to_file", _refuse_download))
            stack.enter_context(_patched(urllib.request, "urlopen", _refuse_download))
            download_util = importlib.import_module("pyiqa.utils.download_util")
            stack.enter_context(_patched(download_util, "download_url_to_file", _refuse_download))
            stack.enter_context(_patched(download_util, "DEFAULT_CACHE_DIR", str(folder / "pyiqa")))
            hf_constants = importlib.import_module("huggingface_hub.constants")
            stack.enter_context(_patched(hf_constants, "HF_HUB_OFFLINE", True))
            yield
    finally:
        torch.hub.set_dir(previous_hub)


class LearnedMetric:
    """A pyiqa metric built from local weights; calling it gives a :class:`MetricResult`."""

    def __init__(self, name: str, model: torch.nn.Module, version: str, folder: Path, device: str) -> None:
        self.name = name
        self.spec = LEARNED_METRICS[name]
        self.model = model
        self.implementation = f"pyiqa {version} ({self.spec.pyiqa_name})"
        self.settings = {"weights_dir": str(folder), "device": device}
        self.device = device

    @torch.no_grad()
    def __call__(self, img: Image, ref: Optional[Image] = None) -> MetricResult:
        """Score ``img`` (inputs as :mod:`addsr.metrics.image`); full-reference metrics need ``ref``."""
        inputs = [to_tensor(img).to(self.device)]
        if self.spec.full_reference:
            if ref is None:
                raise ValueError(f"{self.name} is a full-reference metric: pass the reference image")
            inputs.append(to_tensor(ref).to(self.device))
        value = float(self.model(*inputs).flatten()[0])
        return MetricResult(self.name, value, self.implementation, dict(self.settings))


def learned_metric(
    name: str, weights: Optional[Union[str, os.PathLike]] = None, device: str = "cpu"
) -> LearnedMetric:
    """Build ``name`` (a key of :data:`LEARNED_METRICS`) with pyiqa from local weights, never downloading."""
    if name not in LEARNED_METRICS:
        raise KeyError(f"unknown learned metric {name!r}; choose from {sorted(LEARNED_METRICS)}")
    pyiqa = import_pyiqa()
    spec = LEARNED_METRICS[name]
    folder = weights_dir(weights)
    missing = missing_weights(spec, folder)
    if missing:
        raise MetricUnavailable(
            f"{name} needs weight files that are not on this machine: {', '.join(missing)}. "
            f"Put them there (or point {WEIGHTS_ENV} at a folder laid out as the torch hub cache); "
            "nothing is downloaded at run time. See docs/metrics.md."
        )
    with local_weights_only(folder):
        model = pyiqa.create_metric(spec.pyiqa_name, device=torch.device(device))
    model.eval()
    return LearnedMetric(name, model, getattr(pyiqa, "__version__", "unknown"), folder, device)
