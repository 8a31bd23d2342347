"""Reading RAM's released files into our layout: ``ram_swin_large_14m.pth``, SeeSR's DAPE LoRA file,
``ram_tag_list.txt`` and ``ram_tag_list_threshold.txt``.

Every key of a checkpoint is accounted for: mapped onto one of our parameters, known to be unused
(with the reason), or unexpected. Missing or mis-shaped parameters are errors.
"""

import functools
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .lora import LoRAWeights

RAM_FILE_HINT = "RAM's ram_swin_large_14m.pth (Swin-L, 384 px)"
DAPE_FILE_HINT = "SeeSR's DAPE.pth (LoRA weights of RAM)"
# SeeSR builds its LoRA layers with loralib's default lora_alpha = 1, so scaling = 1 / rank.
DAPE_LORA_ALPHA = 1.0
QKV_LORA_CHUNKS = (True, False, True)  # DAPE updates the q and v parts of Swin's fused qkv

# Name templates: {field} matches _FIELDS[field]; {field+1} is the same number plus one.
_FIELDS = {
    "i": r"\d+",
    "j": r"\d+",
    "p": r"weight|bias",
    "patch": r"proj|norm",
    "block": r"norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2",
    "merge": r"reduction\.weight|norm\.weight|norm\.bias",
}
_TAG_LAYER = "tagging_head.encoder.layer.{i}"
_OUR_TAG_LAYER = "tag_head.layers.{i}"
# (RAM checkpoint name, our name). timm's Swin runs patch merging at the start of the next stage,
# the original Swin at the end of a stage, hence the shifted stage index.
_KEY_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("visual_encoder.patch_embed.{patch}.{p}", "visual_encoder.patch_embed.{patch}.{p}"),
    ("visual_encoder.layers.{i}.blocks.{j}.{block}.{p}", "visual_encoder.layers.{i}.blocks.{j}.{block}.{p}"),
    (
        "visual_encoder.layers.{i}.blocks.{j}.attn.relative_position_bias_table",
        "visual_encoder.layers.{i}.blocks.{j}.attn.relative_position_bias_table",
    ),
    ("visual_encoder.layers.{i}.downsample.{merge}", "visual_encoder.layers.{i+1}.downsample.{merge}"),
    ("visual_encoder.norm.{p}", "visual_encoder.norm.{p}"),
    ("image_proj.{p}", "image_proj.{p}"),
    ("label_embed", "tag_head.label_embed"),
    ("wordvec_proj.{p}", "tag_head.label_proj.{p}"),
    ("fc.{p}", "tag_head.classifier.{p}"),
    (f"{_TAG_LAYER}.crossattention.self.query.{{p}}", f"{_OUR_TAG_LAYER}.attn.to_q.{{p}}"),
    (f"{_TAG_LAYER}.crossattention.self.key.{{p}}", f"{_OUR_TAG_LAYER}.attn.to_k.{{p}}"),
    (f"{_TAG_LAYER}.crossattention.self.value.{{p}}", f"{_OUR_TAG_LAYER}.attn.to_v.{{p}}"),
    (f"{_TAG_LAYER}.crossattention.output.dense.{{p}}", f"{_OUR_TAG_LAYER}.attn.to_out.{{p}}"),
    (f"{_TAG_LAYER}.crossattention.output.LayerNorm.{{p}}", f"{_OUR_TAG_LAYER}.norm1.{{p}}"),
    (f"{_TAG_LAYER}.intermediate.dense.{{p}}", f"{_OUR_TAG_LAYER}.fc1.{{p}}"),
    (f"{_TAG_LAYER}.output.dense.{{p}}", f"{_OUR_TAG_LAYER}.fc2.{{p}}"),
    (f"{_TAG_LAYER}.output.LayerNorm.{{p}}", f"{_OUR_TAG_LAYER}.norm2.{{p}}"),
)
# Older RAM/Tag2Text checkpoints name the tag head "vision_multi"; RAM's own loader renames it.
_KEY_ALIASES = (("vision_multi.", "tagging_head."),)
_KNOWN_UNUSED_RAM = (
    (r"visual_encoder\..*\.(relative_position_index|attn_mask)", "Swin buffers (timm rebuilds them)"),
    (r"tag_encoder\..*", "image-tag interaction encoder (RAM's captioning branch)"),
    (r"text_decoder\..*", "caption decoder (RAM's captioning branch)"),
    (r"class_threshold", "per-class thresholds (read from the threshold file instead)"),
)
_KNOWN_UNUSED_DAPE = ((r"(tag_encoder|text_decoder)\..*", "LoRA of RAM's captioning branch"),)
_TOKEN = re.compile(r"\{(\w+)(\+\d+)?\}")


class RAMFileError(ValueError):
    """A RAM, DAPE, tag-list or threshold file is missing, unreadable or does not hold what it should."""


@dataclass
class LoadReport:
    """What happened to every key of one checkpoint file."""

    source: Path
    used: list[str] = field(default_factory=list)
    known_unused: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Missing and mis-shaped parameters, one message each."""
        return [f"missing {key}" for key in self.missing] + self.mismatched

    def summary(self) -> str:
        lines = [f"{self.source}: {len(self.used)} keys used"]
        lines += [f"  known unused: {len(keys)} keys of {reason}" for reason, keys in self.known_unused.items()]
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): {_preview(self.unexpected)}")
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): {_preview(self.missing)}")
        lines += [f"  {message}" for message in self.mismatched]
        return "\n".join(lines)


def _preview(keys: list[str], limit: int = 8) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


@functools.cache
def _template_regex(template: str) -> re.Pattern:
    parts, end = [], 0
    for token in _TOKEN.finditer(template):
        parts += [re.escape(template[end : token.start()]), f"(?P<{token[1]}>{_FIELDS[token[1]]})"]
        end = token.end()
    return re.compile("".join(parts) + re.escape(template[end:]))


def _offsets(template: str) -> dict[str, int]:
    return {token[1]: int(token[2] or 0) for token in _TOKEN.finditer(template)}


def _rename(key: str, source: str, target: str) -> str | None:
    match = _template_regex(source).fullmatch(key)
    if match is None:
        return None
    source_offsets = _offsets(source)

    def fill(token: re.Match) -> str:
        value = match[token[1]]
        shift = int(token[2] or 0) - source_offsets[token[1]]
        return str(int(value) + shift) if shift else value

    return _TOKEN.sub(fill, target)


def ram_key_to_ours(key: str) -> str | None:
    """Our parameter name for a name in RAM's checkpoint layout, or None if it has no counterpart."""
    for old, new in _KEY_ALIASES:
        key = new + key[len(old) :] if key.startswith(old) else key
    return next((name for ram, ours in _KEY_TEMPLATES if (name := _rename(key, ram, ours))), None)


def our_key_to_ram(key: str) -> str | None:
    """The name in RAM's checkpoint layout for one of our parameters, or None if it has none."""
    return next((name for ram, ours in _KEY_TEMPLATES if (name := _rename(key, ours, ram))), None)


def _known_unused_reason(key: str, rules: tuple[tuple[str, str], ...]) -> str | None:
    return next((reason for pattern, reason in rules if re.fullmatch(pattern, key)), None)


def load_state_dict_file(path: str | Path, expected: str) -> dict[str, torch.Tensor]:
    """The tensors of a PyTorch checkpoint (``weights_only``), unwrapped from a ``{"model": ...}`` dict.

    ``expected`` names the file that should be there; it goes into the error messages.
    """
    path = Path(path)
    if not path.is_file():
        raise RAMFileError(f"{path} does not exist; expected {expected}.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # torch raises many types for a damaged file
        raise RAMFileError(
            f"cannot read {path} as a PyTorch checkpoint (expected {expected}): {error}\n"
            "The file may be truncated or of another kind: download it again. If it is the right file and "
            "weights-only loading refuses an object in it, torch's message above says how to allow that object."
        ) from error
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else loaded
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RAMFileError(f"{path} does not hold a state dict of tensors; expected {expected}.")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def convert_ram_state_dict(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: Path
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Our state dict from one in RAM's layout; ``expected`` holds our parameter shapes."""
    report, converted, mis_shaped = LoadReport(source), {}, set()
    for key, tensor in state.items():
        ours = ram_key_to_ours(key)
        reason = _known_unused_reason(key, _KNOWN_UNUSED_RAM)
        if ours in expected and tensor.shape != expected[ours]:
            report.mismatched.append(f"{key}: shape {tuple(tensor.shape)} in file, {tuple(expected[ours])} expected")
            mis_shaped.add(ours)
        elif ours in expected:
            converted[ours] = tensor
            report.used.append(key)
        elif reason:
            report.known_unused[reason].append(key)
        else:
            report.unexpected.append(key)
    if not report.used:
        raise RAMFileError(_wrong_file_message(source, state, RAM_FILE_HINT))
    report.missing = [our_key_to_ram(key) for key in expected if key not in converted and key not in mis_shaped]
    return converted, report


def _wrong_file_message(source: Path, state: dict[str, torch.Tensor], expected: str) -> str:
    is_lora = bool(state) and all(".lora_" in key for key in state)
    hint = " It holds only LoRA weights: pass it as the DAPE file instead." if is_lora else ""
    return (
        f"{source} does not look like {expected}: none of its {len(state)} keys "
        f"({_preview(sorted(state), 4)}) is one of its parameters.{hint}"
    )


def _dape_target(module: str, tag_layers: int) -> tuple[str, tuple[bool, ...], bool] | None:
    """(our weight name, LoRA chunks, whether tied) for a LoRA module name of the DAPE file."""
    tied = re.fullmatch(r"tag_encoder\.encoder\.layer\.(\d+)\.crossattention\.self\.(query|key)", module)
    if tied and int(tied[1]) < tag_layers:
        # RAM ties these tag-encoder layers' weights to the tag head's, so loralib merges their LoRA
        # into the tag head's weights as well.
        module = "tagging_head" + module.removeprefix("tag_encoder")
    ours = ram_key_to_ours(f"{module}.weight")
    if ours is None:
        return None
    if ours.endswith(".attn.qkv.weight") and ours.startswith("visual_encoder."):
        return ours, QKV_LORA_CHUNKS, False
    if ours.endswith((".attn.to_q.weight", ".attn.to_k.weight")) and ours.startswith("tag_head."):
        return ours, (True,), bool(tied)
    return None


def dape_targets(expected: dict[str, torch.Size]) -> list[str]:
    """Our weight names that the DAPE file must update: Swin qkv and tag-head query/key."""
    return [
        key
        for key in expected
        if (key.startswith("visual_encoder.") and key.endswith(".attn.qkv.weight"))
        or (key.startswith("tag_head.") and key.endswith((".attn.to_q.weight", ".attn.to_k.weight")))
    ]


def convert_dape_state_dict(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Size], tag_layers: int, source: Path
) -> tuple[dict[str, list[LoRAWeights]], LoadReport]:
    """LoRA updates per our weight name from SeeSR's DAPE file (loralib's ``lora_A``/``lora_B`` keys)."""
    report, modules = LoadReport(source), defaultdict(dict)
    for key, tensor in state.items():
        module, _, part = key.rpartition(".")
        if part in ("lora_A", "lora_B"):
            modules[module][part] = tensor
        else:
            report.unexpected.append(key)
    updates, found = defaultdict(list), set()
    for module, parts in modules.items():
        keys = [f"{module}.{part}" for part in sorted(parts)]
        target = _dape_target(module, tag_layers)
        if target is None or target[0] not in expected:
            reason = _known_unused_reason(module, _KNOWN_UNUSED_DAPE)
            if reason:
                report.known_unused[reason].extend(keys)
            else:
                report.unexpected.extend(keys)
            continue
        weight_key, chunks, tied = target
        if not tied:
            found.add(weight_key)
        if len(parts) != 2:
            report.missing.append(f"{module}.{'lora_A' if 'lora_B' in parts else 'lora_B'}")
            continue
        lora = LoRAWeights(parts["lora_A"], parts["lora_B"], chunks, DAPE_LORA_ALPHA)
        problem = lora.shape_problem(tuple(expected[weight_key]))
        if problem:
            report.mismatched.append(f"{module}: {problem}")
            continue
        updates[weight_key].append(lora)
        report.used.extend(keys)
    if not report.used and not report.problems():
        raise RAMFileError(_wrong_file_message(source, state, DAPE_FILE_HINT))
    report.missing += [
        f"{our_key_to_ram(key).removesuffix('.weight')}.lora_A/lora_B"
        for key in dape_targets(expected)
        if key not in found
    ]
    return dict(updates), report


def read_tag_list(path: str | Path) -> list[str]:
    """Tag names, one a line (RAM's ``ram_tag_list.txt``)."""
    tags = _read_lines(path, "RAM's ram_tag_list.txt")
    if not tags:
        raise RAMFileError(f"{path} is empty; expected RAM's ram_tag_list.txt, one tag a line.")
    return tags


def read_tag_thresholds(path: str | Path, num_tags: int) -> list[float]:
    """Per-tag thresholds, one a line (RAM's ``ram_tag_list_threshold.txt``), one for each of ``num_tags`` tags."""
    lines = _read_lines(path, "RAM's ram_tag_list_threshold.txt")
    try:
        thresholds = [float(line) for line in lines]
    except ValueError as error:
        raise RAMFileError(f"{path}: {error}; expected one number a line (ram_tag_list_threshold.txt).") from error
    if len(thresholds) != num_tags:
        raise RAMFileError(f"{path} has {len(thresholds)} thresholds but the tag list has {num_tags} tags.")
    return thresholds


def _read_lines(path: str | Path, expected: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise RAMFileError(f"{path} does not exist; expected {expected}.")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise RAMFileError(f"{path} is not UTF-8 text; expected {expected}.") from error
