"""A model folder's own inference defaults (``inference.json``), as transformers keeps ``generation_config.json``.

A model that is better with other settings than the paper's says so in its folder; an explicit argument always
wins, and a folder without the file (the released AddSR weights) gets the paper's settings.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .colorfix import COLOR_FIXES
from .io import save_text

INFERENCE_DEFAULTS_NAME = "inference.json"


@dataclass(frozen=True)
class InferenceDefaults:
    """The settings a model folder chooses for itself."""

    color_fix: str = "adain"
    """Colour fix against the upscaled LR: ``adain`` (the paper's), ``wavelet`` or ``none``."""

    def __post_init__(self) -> None:
        if self.color_fix not in COLOR_FIXES:
            raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> InferenceDefaults:
        """The defaults in ``model_dir/inference.json``; the paper's when the file is absent."""
        path = Path(model_dir) / INFERENCE_DEFAULTS_NAME
        if not path.is_file():
            return cls()
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); fix or delete it") from None
        known = {item.name for item in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) - known:
            raise ValueError(f"{path} must be a JSON object with keys among {sorted(known)}, got {values!r}")
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def save(self, model_dir: str | Path) -> Path:
        """Write ``model_dir/inference.json``."""
        text = json.dumps(dataclasses.asdict(self), indent=2) + "\n"
        return save_text(text, Path(model_dir) / INFERENCE_DEFAULTS_NAME)
