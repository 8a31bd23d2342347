"""Low-rank (LoRA) updates of linear layers, in the layout of the ``loralib`` package, and merging them."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoRAWeights:
    """A LoRA update ``W += scaling * B @ A`` of a linear layer, as ``loralib`` stores it.

    ``enabled`` splits the layer's output rows into equal chunks and says which chunks get an update
    (``loralib.MergedLinear``'s ``enable_lora``; a fused ``qkv`` layer updating only q and v has
    ``(True, False, True)``). ``lora_A`` stacks one ``[rank, in]`` block per enabled chunk and
    ``lora_B`` one ``[chunk, rank]`` block per enabled chunk. ``scaling = alpha / rank``.
    """

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    enabled: tuple[bool, ...] = (True,)
    alpha: float = 1.0

    @property
    def num_enabled(self) -> int:
        return sum(self.enabled)

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0] // self.num_enabled

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def shape_problem(self, weight_shape: tuple[int, ...]) -> str | None:
        """Why this update cannot apply to a weight of ``weight_shape``, or None if it can."""
        out_features, in_features = weight_shape
        chunk = out_features // len(self.enabled)
        groups = self.num_enabled
        a_shape, b_shape = tuple(self.lora_A.shape), tuple(self.lora_B.shape)
        if self.lora_A.ndim != 2 or self.lora_B.ndim != 2 or a_shape[0] % groups:
            return f"lora_A {a_shape} / lora_B {b_shape} are not {groups} stacked rank-r blocks"
        expected_a, expected_b = (groups * self.rank, in_features), (groups * chunk, self.rank)
        if a_shape != expected_a or b_shape != expected_b or out_features % len(self.enabled):
            return (
                f"lora_A {a_shape} / lora_B {b_shape} do not fit a weight {tuple(weight_shape)} "
                f"(expected {expected_a} / {expected_b})"
            )
        return None

    def delta(self) -> torch.Tensor:
        """The update ``[out, in]`` (float32), zero on the chunks without LoRA."""
        a_blocks = self.lora_A.float().split(self.rank)
        b_blocks = self.lora_B.float().split(self.lora_B.shape[0] // self.num_enabled)
        updates = [b @ a for a, b in zip(a_blocks, b_blocks)]
        zeros = torch.zeros_like(updates[0])
        rows = [updates.pop(0) if on else zeros for on in self.enabled]
        return torch.cat(rows) * self.scaling


def merge_lora(weight: torch.Tensor, updates: list[LoRAWeights]) -> torch.Tensor:
    """``weight`` with every update added (computed in float32, returned in ``weight``'s dtype)."""
    merged = weight.float()
    for update in updates:
        problem = update.shape_problem(tuple(weight.shape))
        if problem:
            raise ValueError(problem)
        merged = merged + update.delta().to(merged.device)
    return merged.to(weight.dtype)
