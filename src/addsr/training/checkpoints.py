"""Training checkpoints: ``output_dir/checkpoints/step-000123/`` in the released model folder layout plus the
state needed to resume, written atomically.

A checkpoint folder holds the trained models (teacher and distillation runs: ``unet/`` and ``controlnet/``; VAE
runs: ``vae/``), as exported (EMA) weights, the frozen parts (``vae/ text_encoder/ tokenizer/ scheduler/`` and
``ram/``: hard links to ``output_dir/components/``), so ``addsr upscale --model`` takes a teacher or student
checkpoint as it is, and ``training_state/``: the raw trainable weights, the EMA, the discriminator heads, the
optimiser and loss-scaler states and ``state.json`` (step, batch layout, seed). It is written under a temporary
name and renamed into place; the rename is the commit point, so a kill at any moment leaves every ``step-*`` folder
complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

CHECKPOINTS_FOLDER = "checkpoints"
COMPONENTS_FOLDER = "components"
STATE_FOLDER = "training_state"
STATE_FILE = "state.json"
LATEST_LINK = "latest"
PREFIX = "step-"
TEMPORARY_PREFIXES = (".tmp-", ".deleting-")


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_FOLDER


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a checkpoint: its state file is written last, just before the rename into place."""
    return (folder / STATE_FOLDER / STATE_FILE).is_file()


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as ``(step, folder)``."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        number = path.name.removeprefix(PREFIX)
        if path.name.startswith(PREFIX) and number.isdigit() and not path.is_symlink() and is_complete(path):
            found.append((int(number), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, if any."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: None, the newest one for ``"auto"`` (None when there is none), or a folder."""
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    folder = Path(resume)
    if not is_complete(folder):
        raise FileNotFoundError(
            f"output.resume = {folder} is not a complete training checkpoint (no {STATE_FOLDER}/{STATE_FILE}); "
            "use 'auto', null, or a step-* folder under OUTPUT_DIR/checkpoints"
        )
    return folder


def remove_stale(output_dir: str | Path) -> None:
    """Delete what interrupted saves and deletions left behind."""
    for folder in (Path(output_dir), checkpoints_dir(output_dir)):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not path.name.startswith(TEMPORARY_PREFIXES):
                continue
            if path.is_symlink() or not path.is_dir():
                path.unlink(missing_ok=True)
            else:
                shutil.rmtree(path, ignore_errors=True)


@dataclass
class TrainingState:
    """What resuming needs beyond the model folders."""

    step: int
    trainable: dict[str, torch.Tensor]
    """Raw (non-EMA) trainable student weights, keyed ``unet.<name>`` / ``controlnet.<name>``."""
    optimizers: dict[str, dict[str, Any]]
    ema: dict[str, torch.Tensor] | None = None
    auxiliary: dict[str, torch.Tensor] | None = None
    """State of the module trained alongside the student (the discriminator heads)."""
    scaler: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """Batch layout and seed of the run (``world_size``, ``batch_size``, ``gradient_accumulation_steps``, ``seed``)."""

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        _save_tensors(self.trainable, folder / "trainable.safetensors")
        if self.ema is not None:
            _save_tensors(self.ema, folder / "ema.safetensors")
        if self.auxiliary is not None:
            _save_tensors(self.auxiliary, folder / "auxiliary.safetensors")
        torch.save({"optimizers": self.optimizers, "scaler": self.scaler}, folder / "optimizers.pt")
        (folder / STATE_FILE).write_text(json.dumps({"step": self.step, **self.meta}, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> TrainingState:
        meta = json.loads((folder / STATE_FILE).read_text())
        optimizers = torch.load(folder / "optimizers.pt", map_location="cpu", weights_only=True)

        def optional(name: str) -> dict[str, torch.Tensor] | None:
            return load_file(folder / name) if (folder / name).is_file() else None

        return cls(
            step=int(meta.pop("step")), trainable=load_file(folder / "trainable.safetensors"),
            optimizers=optimizers["optimizers"], ema=optional("ema.safetensors"),
            auxiliary=optional("auxiliary.safetensors"), scaler=optimizers["scaler"], meta=meta,
        )


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, path)


def write_components(output_dir: str | Path, save: Callable[[Path], Any]) -> Path:
    """``output_dir/components/`` (the frozen parts every checkpoint links to), written once, atomically."""
    target = Path(output_dir) / COMPONENTS_FOLDER
    if target.is_dir():
        return target
    temporary = target.with_name(f".tmp-{COMPONENTS_FOLDER}-{uuid.uuid4().hex[:8]}")
    try:
        save(temporary)
        os.replace(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def _link_tree(source: Path, destination: Path) -> None:
    """Hard-link every file of ``source`` into ``destination`` (copy where links are impossible)."""
    for path in source.rglob("*"):
        target = destination / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def write_checkpoint(
    output_dir: str | Path,
    state: TrainingState,
    export_models: Callable[[Path], Any],
    keep_last: int | None = None,
) -> Path:
    """Write checkpoint ``step-<state.step>``: ``export_models(folder)`` writes ``unet/`` and ``controlnet/``; the
    components are linked in; the training state goes to ``training_state/``. Then update the ``latest`` link and
    delete all but the ``keep_last`` newest checkpoints."""
    folder = checkpoints_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / checkpoint_name(state.step)
    temporary = folder / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        export_models(temporary)
        components = Path(output_dir) / COMPONENTS_FOLDER
        if components.is_dir():
            _link_tree(components, temporary)
        state.save(temporary / STATE_FOLDER)
        if target.exists():
            _delete(target)
        os.replace(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    _point_latest(folder, target.name)
    if keep_last is not None:
        for _, old in list_checkpoints(output_dir)[:-keep_last]:
            _delete(old)
    return target


def _delete(folder: Path) -> None:
    """Rename first, so that a half-deleted folder never looks like a checkpoint."""
    doomed = folder.with_name(f".deleting-{folder.name}-{uuid.uuid4().hex[:8]}")
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _point_latest(folder: Path, name: str) -> None:
    """Atomically point ``checkpoints/latest`` at ``name`` (where symbolic links are supported)."""
    link = folder / LATEST_LINK
    temporary = folder / f".tmp-latest-{uuid.uuid4().hex[:8]}"
    try:
        os.symlink(name, temporary, target_is_directory=True)
        os.replace(temporary, link)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        logger.warning("Could not point %s at %s: %s", link, name, error)
