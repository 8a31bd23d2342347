"""Super-resolution methods behind one interface: AddSR models, PIL interpolation and spandrel-loadable networks.

A method is built cheaply (arguments only) and loads its weights in :meth:`SuperResolutionMethod.load`, so that an
evaluation whose images are all done never loads a model. :func:`parse_method` builds one from a short text spec,
the form the command line and the config files use.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import re
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..devices import resolve_device, resolve_dtype
from ..config import ConfigError, merge_config, parse_overrides
from ..io import pil_to_tensor, tensor_to_pil, update_hash
from ..model_folder import DEFAULT_MODEL_DIR, read_color_fix
from ..sampling import DEFAULT_SAMPLER, SamplerSettings

logger = logging.getLogger(__name__)

METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
SPANDREL_HINT = "pip install 'addsr[baselines]' (spandrel)"
FINGERPRINTED_SUFFIXES = {".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".json", ".txt"}


def _fingerprinted_files(path: Path) -> list[tuple[str, Path]]:
    """(name, file) pairs: a single file, or a folder's weight, config and tag-list files outside ``training_state/``."""
    if path.is_file():
        return [(path.name, path)]
    return [
        (file.relative_to(path).as_posix(), file) for file in sorted(path.rglob("*"))
        if file.is_file() and file.suffix.lower() in FINGERPRINTED_SUFFIXES
        and "training_state" not in file.relative_to(path).parts
    ]


def weights_fingerprint(*paths: Path) -> str:
    """First 16 hex digits of a SHA-256 over weight files and model folders, so that records made by other weights
    under the same path are recognised."""
    digest = hashlib.sha256()
    for path in paths:
        for name, file in _fingerprinted_files(path):
            digest.update(name.encode())
            update_hash(digest, file)
    return digest.hexdigest()[:16]


class SuperResolutionMethod(ABC):
    """Upscales one LR image at a time by ``scale``; ``name`` is its column in the tables and its folder name."""

    def __init__(self, name: str, scale: int):
        if not METHOD_NAME.fullmatch(name):
            raise ValueError(
                f"Method name {name!r} is not usable as a folder name: use letters, digits, '.', '_', '+' or '-'"
            )
        self.name = name
        self.scale = scale

    @property
    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything that determines the outputs, kept in every per-image record (JSON types only)."""

    def load(self) -> None:
        """Load weights (no-op for methods without any)."""

    def unload(self) -> None:
        """Free the weights once the method's images are done."""

    @abstractmethod
    def upscale(self, lr: torch.Tensor, seed: int) -> torch.Tensor:
        """``[1, 3, h, w]`` in ``[0, 1]`` -> ``[1, 3, scale*h, scale*w]`` in ``[0, 1]`` on the CPU; ``seed`` fixes
        any randomness so that every image has its own reproducible draw."""


class InterpolationMethod(SuperResolutionMethod):
    """PIL's ``Image.resize`` with the bicubic or Lanczos filter, on the 8-bit LR image."""

    def __init__(self, kind: str = "bicubic", scale: int = 4, name: str | None = None):
        if kind not in PIL_FILTERS:
            raise ValueError(f"Unknown interpolation {kind!r}: choose one of {', '.join(PIL_FILTERS)}")
        super().__init__(name or kind, scale)
        self.kind = kind

    @property
    def settings(self) -> dict[str, Any]:
        return {"type": self.kind, "implementation": f"PIL Image.resize, Resampling.{self.kind.upper()}",
                "scale": self.scale}

    def upscale(self, lr: torch.Tensor, seed: int) -> torch.Tensor:
        image = tensor_to_pil(lr)[0]
        return pil_to_tensor(image.resize((image.width * self.scale, image.height * self.scale), PIL_FILTERS[self.kind]))


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pth``/``.ckpt``/``.pt`` file loaded with ``weights_only``."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


class SpandrelMethod(SuperResolutionMethod):
    """Any super-resolution network spandrel recognises from its weights (ESRGAN/Real-ESRGAN, SwinIR, HAT, ...)."""

    def __init__(
        self,
        weights: str | Path,
        scale: int = 4,
        name: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ):
        self.weights = Path(weights).expanduser().resolve()
        if not self.weights.is_file():
            raise FileNotFoundError(f"spandrel weights {self.weights} do not exist")
        super().__init__(name or self.weights.stem, scale)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._model = None

    @property
    def settings(self) -> dict[str, Any]:
        return {"type": "spandrel", "weights": str(self.weights), "weights_sha256": self.weights_sha256,
                "dtype": str(self.dtype).removeprefix("torch."), "scale": self.scale}

    @cached_property
    def weights_sha256(self) -> str:
        return weights_fingerprint(self.weights)

    def load(self) -> None:
        try:
            import spandrel
        except ImportError as error:
            raise ImportError(f"The spandrel method {self.name!r} needs spandrel ({error}); {SPANDREL_HINT}") from None
        state_dict = spandrel.canonicalize_state_dict(load_state_dict(self.weights))
        model = spandrel.ModelLoader().load_from_state_dict(state_dict)
        if not isinstance(model, spandrel.ImageModelDescriptor) or model.purpose != "SR":
            raise ValueError(f"{self.weights} is a {model.architecture.name} {model.purpose} model, not super-resolution")
        if model.scale != self.scale:
            raise ValueError(f"{self.weights} upscales x{model.scale}, but this evaluation is x{self.scale}")
        if self.dtype == torch.float16 and not model.supports_half:
            logger.warning("%s does not support float16; running it in float32", model.architecture.name)
            self.dtype = torch.float32
        self._model = model.to(self.device).to(self.dtype).eval()

    def unload(self) -> None:
        self._model = None

    def upscale(self, lr: torch.Tensor, seed: int) -> torch.Tensor:
        if self._model is None:
            self.load()
        return self._model(lr.to(self.device, self.dtype)).float().cpu()


class AddSRMethod(SuperResolutionMethod):
    """An AddSR (or SeeSR) model folder run with fixed sampler settings."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        sampler: SamplerSettings = DEFAULT_SAMPLER,
        scale: int = 4,
        name: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        pipeline_files: dict[str, str | Path] | None = None,
    ):
        """``sampler``'s colour fix and wavelet levels left at ``None`` take the model folder's own; its ``upscale``
        becomes ``scale``. ``pipeline_files``: extra paths for ``AddSRPipeline.from_pretrained``
        (``base_model_dir``, ``ram``, ``dape``, ``ram_tag_list``, ``ram_tag_thresholds``). No ``model_dir``: the
        shipped default model."""
        self.model_dir = Path(model_dir or DEFAULT_MODEL_DIR).expanduser().resolve()
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"AddSR model folder {self.model_dir} does not exist")
        super().__init__(name or f"{self.model_dir.name}-{sampler.num_steps}step", scale)
        self.color_fix = sampler.final_color_fix(read_color_fix(self.model_dir))
        self.sampler = dataclasses.replace(sampler, upscale=scale, color_fix=self.color_fix.method,
                                           wavelet_levels=self.color_fix.wavelet_levels)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.pipeline_files = {key: Path(value).expanduser().resolve() for key, value in (pipeline_files or {}).items()}
        self._pipe = None

    @property
    def settings(self) -> dict[str, Any]:
        others = {field.name: getattr(self.sampler, field.name) for field in dataclasses.fields(SamplerSettings)
                  if field.name not in RECORDED_SAMPLER_FIELDS}
        changed = {name: value for name, value in others.items() if value != getattr(DEFAULT_SAMPLER, name)}
        return {
            "type": "addsr", "model_dir": str(self.model_dir), "weights_sha256": self.weights_sha256,
            "num_steps": self.sampler.num_steps, "psr_weight": self.sampler.psr_weight, **self.color_fix.settings,
            "process_size": self.sampler.process_size, **_plain(changed),
            "dtype": str(self.dtype).removeprefix("torch."), "scale": self.scale,
            **{key: str(value) for key, value in self.pipeline_files.items()},
        }

    @cached_property
    def weights_sha256(self) -> str:
        """Fingerprint of the model folder and the extra pipeline files."""
        return weights_fingerprint(self.model_dir, *self.pipeline_files.values())

    def load(self) -> None:
        from ..pipeline import AddSRPipeline

        self._pipe = AddSRPipeline.from_pretrained(self.model_dir, device=self.device, dtype=self.dtype,
                                                   **self.pipeline_files)
        self._pipe.progress_bar = False

    def unload(self) -> None:
        self._pipe = None

    def upscale(self, lr: torch.Tensor, seed: int) -> torch.Tensor:
        if self._pipe is None:
            self.load()
        result = self._pipe(lr, settings=self.sampler, generator=torch.Generator().manual_seed(seed), output_type="pt")
        return result.images.float().cpu()


RECORDED_SAMPLER_FIELDS = ("num_steps", "psr_weight", "color_fix", "wavelet_levels", "process_size", "upscale")
"""Sampler settings every AddSR record names; the others are recorded when they differ from the defaults."""


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Settings as JSON types (tuples as lists)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


ADDSR_OPTIONS = {"steps": "num_steps"}
"""Spec options named otherwise than their sampler setting; any other setting goes by its own name."""
ADDSR_FILES = {"base_model": "base_model_dir", "ram": "ram", "dape": "dape", "ram_tag_list": "ram_tag_list",
               "ram_tag_thresholds": "ram_tag_thresholds"}
SAMPLER_FIELDS = [f.name for f in dataclasses.fields(SamplerSettings) if f.name != "upscale"]
METHOD_SPEC_HELP = (
    "bicubic | lanczos | spandrel:WEIGHTS | addsr:MODEL_DIR | addsr (the shipped default model), then optional "
    "',key=value' options: name (all); steps or any sampler setting (addsr.sampling.SamplerSettings: "
    f"{', '.join(name for name in SAMPLER_FIELDS if name != 'num_steps')}) and {', '.join(ADDSR_FILES)} (addsr)"
)


def _options(spec: str, items: list[str], allowed: set[str]) -> dict[str, str]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close and sep else ""
            raise ValueError(f"Bad option {item!r} in method {spec!r}{hint}; options here: {sorted(allowed)}. "
                             f"Format: {METHOD_SPEC_HELP}")
        options[key] = value
    return options


def parse_method(
    spec: str, scale: int = 4, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> SuperResolutionMethod:
    """A method from a spec such as ``bicubic``, ``spandrel:weights/realesrgan-x4plus.pth,name=Real-ESRGAN`` or
    ``addsr:models/addsr,steps=1,psr_weight=0.4,color_fix=wavelet`` (see ``METHOD_SPEC_HELP``; the values are read
    as in config files, :mod:`addsr.config`); ``addsr`` with no folder is the shipped default model."""
    head, *items = spec.split(",")
    kind, _, path = head.partition(":")
    if kind in PIL_FILTERS and not path:
        return InterpolationMethod(kind, scale, **_options(spec, items, {"name"}))
    if kind == "spandrel" and path:
        return SpandrelMethod(path, scale, device=device, dtype=dtype, **_options(spec, items, {"name"}))
    if kind == "addsr":
        allowed = {"name", *ADDSR_OPTIONS, *SAMPLER_FIELDS, *ADDSR_FILES}
        options = _options(spec, items, allowed)
        sampler = {ADDSR_OPTIONS.get(key, key): value for key, value in options.items()
                   if ADDSR_OPTIONS.get(key, key) in SAMPLER_FIELDS}
        try:
            settings = merge_config(DEFAULT_SAMPLER, parse_overrides([f"{k}={v}" for k, v in sampler.items()]),
                                    source=f"method {spec!r}")
        except ConfigError as error:
            raise ValueError(f"Bad option value: {error}") from None
        files = {ADDSR_FILES[key]: value for key, value in options.items() if key in ADDSR_FILES}
        return AddSRMethod(path or None, settings, scale=scale, name=options.get("name"), device=device, dtype=dtype,
                           pipeline_files=files)
    raise ValueError(f"Cannot read method {spec!r}; expected {METHOD_SPEC_HELP}")
