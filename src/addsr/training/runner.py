"""The training loop shared by every training command (the VAE, the teacher, TA-ADD distillation): accelerate (one
or many processes, mixed precision), AdamW with warm-up and an optional cosine decay, gradient accumulation and
clipping, EMA, checkpoints and resuming, TensorBoard logging, a progress bar and validation grids.

What is trained, how a batch is made and how its loss is computed is a :class:`TrainingTask` (its loss: an
*objective*, :class:`Objective`); this module does the rest.
Every random draw of a micro-step comes from a generator seeded by ``(seed, process, step, micro-step)`` and the
data position follows from the step, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import broadcast
from tqdm.auto import tqdm

from ..io import find_images, load_image, pil_to_tensor, resize_images, save_image, save_text, tensor_to_pil
from ..pipeline import AddSRPipeline
from .checkpoints import (
    TrainingState,
    checkpoint_name,
    checkpoints_dir,
    latest_checkpoint,
    remove_stale,
    resolve_resume,
    write_checkpoint,
    write_components,
)
from .components import FrozenComponents, move_to
from ..config import config_to_dict
from .config import CropConfig, OptimizationConfig, OutputConfig, RunOutputConfig
from .data import TrainingBatch, derive_seed, hr_dataloader, list_hr_images
from .ema import ExponentialMovingAverage
from .offload import CPU, OffloadedTagger

logger = logging.getLogger(__name__)

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Objective(Protocol):
    """A training objective: its loss terms for one micro-batch, back-propagated with ``backward``.

    ``auxiliary`` is a module trained alongside the student with its own AdamW (the discriminator heads) or None.
    Its gradients are averaged over processes by the loop (it is not wrapped in DDP). On the last micro-step of an
    optimiser step the loop passes ``step_auxiliary``, which averages, applies and clears those gradients.
    """

    auxiliary: nn.Module | None
    auxiliary_name: str
    """Names the auxiliary module in the logs (``<name>_grad_norm``)."""

    def accumulate(
        self,
        batch: TrainingBatch,
        generator: torch.Generator | None,
        backward: Callable[[torch.Tensor], None],
        step_auxiliary: Callable[[], None] | None = None,
    ) -> dict[str, float]: ...


class TrainingConfig(Protocol):
    data: CropConfig
    optimization: OptimizationConfig
    output: RunOutputConfig


ObjectiveFactory = Callable[[dict[str, nn.Module], torch.device, torch.dtype], Objective]
"""Builds the objective from the (possibly DDP-wrapped) trained models, the device and the dtype of frozen models;
it moves its own frozen models there (or keeps them on the CPU with ``optimization.offload_frozen``)."""
BatchMaker = Callable[[torch.Tensor, torch.Generator, list[int]], Any]
"""Turns ``[B, 3, H, W]`` uint8 HR crops on the device, the micro-step's generator and the crops' image indices into
the objective's batch."""


@dataclass
class TrainingTask:
    """What a run trains and how, beside the loop itself."""

    models: dict[str, nn.Module]
    """The trained models, wrapped by accelerate and exported into every checkpoint as ``<name>/`` folders (each
    has ``save_pretrained``)."""
    trainable: Mapping[str, nn.Parameter]
    """The parameters the optimiser updates, keyed ``<model>.<parameter>``; the others stay frozen."""
    make_objective: ObjectiveFactory
    make_batches: Callable[[list[Path]], BatchMaker]
    """Builds the batch maker for the run's HR images, once the frozen models are on the device."""
    frozen: FrozenComponents | None = None
    """Frozen Stable Diffusion parts and tagger: moved to the device, linked into every checkpoint, and used by the
    validation grids."""
    auxiliary_learning_rate: float | None = None
    """Learning rate of the objective's auxiliary module; unset: ``optimization.learning_rate``."""


def learning_rate_factor(step: int, optimization: OptimizationConfig) -> float:
    """The learning rate of optimiser step ``step`` (from 0) over ``learning_rate``: a linear warm-up over
    ``lr_warmup_steps``, then constant, or a cosine decay to ``final_learning_rate`` at ``max_steps``."""
    warmup = optimization.lr_warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if optimization.final_learning_rate is None:
        return 1.0
    final = optimization.final_learning_rate / optimization.learning_rate
    progress = (step - warmup) / max(optimization.max_steps - warmup, 1)
    return final + (1 - final) * (1 + math.cos(math.pi * progress)) / 2


def learning_rate_schedule(
    optimizer: torch.optim.Optimizer, optimization: OptimizationConfig, start: int = 0, base: float | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`learning_rate_factor` times ``base`` (default: the optimiser's rate) from step ``start``; ``step()`` it
    after each optimiser step."""
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"] if base is None else base
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(learning_rate_factor, optimization=optimization), last_epoch=start - 1
    )


def eight_bit_adamw() -> type[torch.optim.Optimizer]:
    """bitsandbytes' ``AdamW8bit``, imported only when asked for."""
    try:
        import bitsandbytes
    except ImportError:
        raise ImportError(
            "optimization.optimizer: adamw8bit needs bitsandbytes: `pip install -c constraints.txt 'addsr[adamw8bit]'`"
            ", or set optimization.optimizer: adamw"
        ) from None
    return bitsandbytes.optim.AdamW8bit


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` of ``module``'s parameters for a forward pass, then restore it."""
    flags = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError(
            "TensorBoard logging needs the 'tensorboard' package: `pip install tensorboard`, or set "
            "output.tensorboard: false"
        ) from None
    return SummaryWriter(log_dir=str(log_dir))


class TrainingRun:
    """One run: builds the accelerator, optimisers, EMA and data, resumes if asked, and trains to ``max_steps``."""

    def __init__(self, config: TrainingConfig, task: TrainingTask):
        self.config = config
        optimization, output = config.optimization, config.output
        self.output_dir = Path(output.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=optimization.mixed_precision, cpu=optimization.device == "cpu",
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=optimization.find_unused_parameters)],
        )
        self.device = self.accelerator.device
        self.weight_dtype = WEIGHT_DTYPES[optimization.mixed_precision]
        self.frozen = task.frozen
        self.trainable = dict(task.trainable)
        self.step = 0
        self._auxiliary_logs: dict[str, float] = {}

        self._prepare_output_dir()
        self.models = self._prepare_models(task.models)
        self.objective = task.make_objective(self.models, self.device, self.weight_dtype)
        self.optimizer = self._adamw(list(self.trainable.values()), optimization.learning_rate,
                                     eight_bit=optimization.optimizer == "adamw8bit")
        self.ema = ExponentialMovingAverage(self.trainable, optimization.ema_decay) \
            if optimization.ema_decay is not None else None
        self.auxiliary_learning_rate = task.auxiliary_learning_rate or optimization.learning_rate
        self.auxiliary_optimizer = self._prepare_auxiliary()
        self._resume(resolve_resume(output.resume, self.output_dir))
        self.schedules = [learning_rate_schedule(self.optimizer, optimization, self.step, optimization.learning_rate)]
        if self.auxiliary_optimizer is not None:
            self.schedules.append(learning_rate_schedule(self.auxiliary_optimizer, optimization, self.step,
                                                         self.auxiliary_learning_rate))
        self.images = list_hr_images(config.data.hr)
        self.data = self._data()
        self.batch_maker = task.make_batches(self.images)
        self._log_batch()
        self.writer = _tensorboard_writer(self.output_dir / "logs") \
            if output.tensorboard and self.accelerator.is_main_process else None
        self.validation = output if isinstance(output, OutputConfig) and output.validation_every else None
        self.validation_images = [(path.stem, pil_to_tensor(load_image(path)))
                                  for path in find_images(output.validation_images)] \
            if self.validation is not None and self.accelerator.is_main_process else []

    # -- setup -----------------------------------------------------------------------------------------------

    @property
    def offloading(self) -> bool:
        """Whether frozen models wait on the CPU between uses (asked for, and training on an accelerator)."""
        return self.config.optimization.offload_frozen and self.device.type != "cpu"

    def _adamw(
        self, parameters: list[nn.Parameter], learning_rate: float, eight_bit: bool = False
    ) -> torch.optim.Optimizer:
        optimization = self.config.optimization
        return (eight_bit_adamw() if eight_bit else torch.optim.AdamW)(
            parameters, lr=learning_rate, betas=optimization.betas, weight_decay=optimization.weight_decay,
            eps=optimization.epsilon,
        )

    def _prepare_output_dir(self) -> None:
        """Main process: clear leftovers of interrupted saves, write the config and the frozen components."""
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_stale(self.output_dir)
            save_text(yaml.safe_dump(config_to_dict(self.config), sort_keys=False), self.output_dir / "config.yaml")
            if self.frozen is not None:
                write_components(self.output_dir, self.frozen.save_pretrained)
        self.accelerator.wait_for_everyone()

    def _prepare_models(self, models: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """Frozen models to the device in the weight dtype (the tagger to the CPU when offloading, behind an
        :class:`OffloadedTagger`); the trained models (float32) wrapped by accelerate."""
        frozen = self.frozen
        if frozen is not None:
            for module in (frozen.vae, frozen.text_encoder):
                move_to(module, self.device, self.weight_dtype).eval().requires_grad_(False)
            if isinstance(frozen.tagger, nn.Module):
                move_to(frozen.tagger, CPU if self.offloading else self.device, self.weight_dtype)
                frozen.tagger.eval().requires_grad_(False)
                if self.offloading:
                    frozen.tagger = OffloadedTagger(frozen.tagger, self.device)
        prepared = self.accelerator.prepare(*(model.train() for model in models.values()))
        return dict(zip(models, prepared if len(models) > 1 else [prepared]))

    def _prepare_auxiliary(self) -> torch.optim.AdamW | None:
        """The objective's auxiliary module on the device, the same in every process, with its optimiser."""
        auxiliary = self.objective.auxiliary
        if auxiliary is None:
            return None
        auxiliary.to(self.device).train()
        if self.accelerator.num_processes > 1:  # not wrapped in DDP: start every process from the main one's weights
            for tensor in auxiliary.state_dict().values():
                tensor.copy_(broadcast(tensor.clone(), from_process=0))
        return self._adamw([p for p in auxiliary.parameters() if p.requires_grad], self.auxiliary_learning_rate)

    def _data(self) -> Iterator[torch.Tensor]:
        """HR crop batches of this process, from the position the current step has reached."""
        optimization = self.config.optimization
        used = self.step * optimization.gradient_accumulation_steps * optimization.batch_size
        return iter(hr_dataloader(
            self.images, self.config.data, optimization.batch_size, optimization.seed, self.accelerator.process_index,
            self.accelerator.num_processes, start=used, pin_memory=self.device.type == "cuda",
        ))

    def _log_batch(self) -> None:
        optimization = self.config.optimization
        processes, accumulation = self.accelerator.num_processes, optimization.gradient_accumulation_steps
        logger.info(
            "Batch: %d per device x %d processes x %d accumulation steps = %d samples per optimiser step in total",
            optimization.batch_size, processes, accumulation, optimization.batch_size * processes * accumulation,
        )

    def _resume(self, checkpoint: Path | None) -> None:
        if checkpoint is None:
            if latest_checkpoint(self.output_dir) is not None:
                logger.warning("%s has checkpoints but output.resume is null: starting over, overwriting them",
                               self.output_dir)
            return
        state = TrainingState.load(checkpoint / "training_state")
        if set(state.trainable) != set(self.trainable):
            raise ValueError(
                f"{checkpoint} was trained with another trainable set; resume with the same 'trainable' patterns or "
                "start a new output_dir"
            )
        with torch.no_grad():
            for name, parameter in self.trainable.items():
                parameter.copy_(state.trainable[name])
        self.optimizer.load_state_dict(state.optimizers["student"])
        if self.ema is not None:
            if state.ema is None:
                raise ValueError(f"{checkpoint} has no EMA state but optimization.ema_decay is set")
            self.ema.load_state_dict(state.ema)
        if self.auxiliary_optimizer is not None:
            self.objective.auxiliary.load_state_dict(state.auxiliary)
            self.auxiliary_optimizer.load_state_dict(state.optimizers["auxiliary"])
        if self.accelerator.scaler is not None and state.scaler is not None:
            self.accelerator.scaler.load_state_dict(state.scaler)
        meta = self._meta()
        changed = {key: (value, meta.get(key)) for key, value in state.meta.items() if meta.get(key) != value}
        if changed:
            logger.warning("Resuming with a different batch layout or seed %s: the data order differs from the "
                           "original run", changed)
        self.step = state.step
        logger.info("Resumed from %s at step %d", checkpoint, self.step)

    def _meta(self) -> dict[str, Any]:
        optimization = self.config.optimization
        return {
            "world_size": self.accelerator.num_processes, "batch_size": optimization.batch_size,
            "gradient_accumulation_steps": optimization.gradient_accumulation_steps, "seed": optimization.seed,
        }

    # -- the loop --------------------------------------------------------------------------------------------

    def train(self) -> Path | None:
        """Train until ``max_steps``; return the last checkpoint (None if there was nothing to do and none exists)."""
        optimization, output = self.config.optimization, self.config.output
        last_checkpoint = latest_checkpoint(self.output_dir) if self.step >= optimization.max_steps else None
        progress = tqdm(
            total=optimization.max_steps, initial=self.step, desc="training", dynamic_ncols=True,
            disable=not (output.progress_bar and self.accelerator.is_local_main_process),
        )
        interval: dict[str, list[float]] = defaultdict(list)
        while self.step < optimization.max_steps:
            started = time.perf_counter()
            logs = self.optimizer_step()
            self.step += 1
            logs["step_seconds"] = time.perf_counter() - started
            for key, value in logs.items():
                interval[key].append(value)
            progress.update(1)
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            final = self.step == optimization.max_steps
            if self.step % output.log_every == 0 or final:
                self._log({key: sum(values) / len(values) for key, values in sorted(interval.items())})
                interval.clear()
            if self.validation is not None and (self.step % self.validation.validation_every == 0 or final):
                self._validate()
            if self.step % output.checkpoint_every == 0 or final:
                last_checkpoint = self._save()
        progress.close()
        self.accelerator.wait_for_everyone()
        if self.writer is not None:
            self.writer.close()
        return last_checkpoint

    def optimizer_step(self) -> dict[str, float]:
        """One optimiser step over ``gradient_accumulation_steps`` micro-batches; returns its logs (the step counter
        is the caller's)."""
        optimization = self.config.optimization
        accumulation = optimization.gradient_accumulation_steps
        logs: dict[str, float] = defaultdict(float)
        for micro in range(accumulation):
            hr, indices = next(self.data)
            generator = torch.Generator(self.device).manual_seed(
                derive_seed(optimization.seed, self.accelerator.process_index, self.step, micro)
            )
            batch = self.batch_maker(hr.to(self.device, non_blocking=True), generator, indices.tolist())
            last = micro == accumulation - 1
            with self._gradient_sync(last):
                micro_logs = self.objective.accumulate(
                    batch, generator, self._backward, self._step_auxiliary if last else None
                )
            for key, value in micro_logs.items():
                logs[key] += value / accumulation
            if self.ema is not None and optimization.ema_update == "micro_step" and not last:
                self.ema.update()  # released: before the weights change, so the average takes them again

        learning_rate = self.optimizer.param_groups[0]["lr"]
        scaler = self.accelerator.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.trainable.values()), optimization.max_grad_norm)
        if scaler is not None:
            logs["loss_scale"] = scaler.get_scale()
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for schedule in self.schedules:
            schedule.step()
        if self.ema is not None:
            self.ema.update()
        return {**logs, **self._auxiliary_logs, "grad_norm": grad_norm.item(), "lr": learning_rate}

    def _backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss / self.config.optimization.gradient_accumulation_steps)

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """DDP's gradient all-reduce only on the last micro-step of an optimiser step."""
        stack = contextlib.ExitStack()
        if not sync:
            for model in self.models.values():
                stack.enter_context(self.accelerator.no_sync(model))
        return stack

    def _step_auxiliary(self) -> None:
        """Average the auxiliary module's gradients over processes, apply them, clear them."""
        parameters = [p for p in self.objective.auxiliary.parameters() if p.grad is not None]
        if self.accelerator.num_processes > 1 and parameters:
            flat = self.accelerator.reduce(torch.cat([p.grad.flatten() for p in parameters]), reduction="mean")
            for parameter, grad in zip(parameters, flat.split([p.numel() for p in parameters])):
                parameter.grad.copy_(grad.view_as(parameter.grad))
        scaler = self.accelerator.scaler
        if scaler is not None:
            scaler.unscale_(self.auxiliary_optimizer)
        norm = torch.nn.utils.clip_grad_norm_(parameters, float("inf")) if parameters else torch.zeros(())
        self._auxiliary_logs = {f"{self.objective.auxiliary_name}_grad_norm": norm.item()}
        if scaler is not None:
            scaler.step(self.auxiliary_optimizer)
        else:
            self.auxiliary_optimizer.step()
        self.auxiliary_optimizer.zero_grad(set_to_none=True)

    # -- logging, validation, checkpoints ----------------------------------------------------------------------

    def _log(self, logs: dict[str, float]) -> None:
        """Average the interval's values over processes and write them to TensorBoard under ``train/``."""
        values = torch.tensor(list(logs.values()), device=self.device, dtype=torch.float64)
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="mean")
        if not self.accelerator.is_main_process:
            return
        if self.writer is None:
            logger.info("step %d: %s", self.step, " ".join(f"{key} {value:.4g}" for key, value in
                                                          zip(logs, values.tolist())))
            return
        for key, value in zip(logs, values.tolist()):
            self.writer.add_scalar(f"train/{key}", value, self.step)
        self.writer.flush()

    def _pipeline(self) -> AddSRPipeline:
        """An inference pipeline over the live models (not moved or cast: the frozen parts stay as they are)."""
        frozen = self.frozen
        pipe = AddSRPipeline(
            unet=self.accelerator.unwrap_model(self.models["unet"]),
            controlnet=self.accelerator.unwrap_model(self.models["controlnet"]),
            vae=frozen.vae, text_encoder=frozen.text_encoder, tokenizer=frozen.tokenizer, schedule=frozen.schedule,
            tagger=frozen.tagger,
        )
        pipe.device, pipe.dtype, pipe.progress_bar = self.device, torch.float32, False
        return pipe

    def ema_applied(self) -> contextlib.AbstractContextManager:
        """The trained models with their EMA weights inside the block (the raw ones when there is no EMA)."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def _validate(self) -> None:
        """Upscale the validation LR images with the current (EMA) model; save a grid (condition | output per row)."""
        if not self.validation_images:
            return
        pipe = self._pipeline()
        rows = []
        with self.ema_applied(), torch.no_grad(), self.accelerator.autocast():
            for name, lr in self.validation_images:
                result = pipe(
                    lr, settings=self.validation.validation_sampler, output_type="pt",
                    generator=torch.Generator(self.device).manual_seed(self.config.optimization.seed),
                )
                restored = result.images.float()
                condition = resize_images(lr, tuple(restored.shape[-2:]))
                rows.append(torch.cat([condition, restored], dim=-1))
                if self.writer is not None:
                    self.writer.add_image(f"validation/{name}", restored[0].clamp(0, 1), self.step)
        grid = _stack_rows(rows)
        save_image(tensor_to_pil(grid)[0], self.output_dir / "validation" / f"{checkpoint_name(self.step)}.png")

    def _save(self) -> Path:
        """Write a checkpoint (main process); every process gets its path."""
        output = self.config.output
        path = checkpoints_dir(self.output_dir) / checkpoint_name(self.step)
        if self.accelerator.is_main_process:
            scaler = self.accelerator.scaler
            optimizers = {"student": self.optimizer.state_dict()}
            if self.auxiliary_optimizer is not None:
                optimizers["auxiliary"] = self.auxiliary_optimizer.state_dict()
            state = TrainingState(
                step=self.step,
                trainable={name: p.detach().cpu().clone() for name, p in self.trainable.items()},
                optimizers=optimizers,
                ema=self.ema.state_dict() if self.ema is not None else None,
                auxiliary=self.objective.auxiliary.state_dict() if self.objective.auxiliary is not None else None,
                scaler=scaler.state_dict() if scaler is not None else None,
                meta=self._meta(),
            )
            path = write_checkpoint(self.output_dir, state, self._export_models, output.keep_last)
            logger.info("Saved checkpoint %s", path)
        return path

    def _export_models(self, folder: Path) -> None:
        with self.ema_applied():
            for name, model in self.models.items():
                self.accelerator.unwrap_model(model).save_pretrained(folder / name)


def _stack_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack ``[1, 3, h, w]`` rows of different widths into one image, padding with black on the right."""
    width = max(row.shape[-1] for row in rows)
    padded = [torch.nn.functional.pad(row.cpu().float(), (0, width - row.shape[-1])) for row in rows]
    return torch.cat(padded, dim=-2)
