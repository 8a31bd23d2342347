"""Recognize-Anything (RAM) as the pipeline's tagger: tags for the prompt, embeddings for image cross-attention."""

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models.swin_transformer import SwinTransformer, WindowAttention
from torch import nn

from .checkpoint import (
    DAPE_FILE_HINT,
    RAM_FILE_HINT,
    LoadReport,
    RAMFileError,
    convert_dape_state_dict,
    convert_ram_state_dict,
    load_state_dict_file,
    read_tag_list,
    read_tag_thresholds,
)
from .lora import merge_lora
from .tag_head import TagHead

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TAG_LIST_NAME = "tag_list.txt"
TAG_THRESHOLDS_NAME = "tag_thresholds.txt"


@dataclass
class RAMConfig:
    """RAM's architecture; the defaults are the released Swin-L model at 384 px (``ram_swin_large_14m``)."""

    image_size: int = 384
    patch_size: int = 4
    swin_embed_dim: int = 192
    swin_depths: tuple[int, ...] = (2, 2, 18, 2)
    swin_num_heads: tuple[int, ...] = (6, 12, 24, 48)
    swin_window_size: int = 12
    swin_mlp_ratio: float = 4.0
    embed_dim: int = 512  # image_proj output = label embedding width = tag-head context width
    num_classes: int = 4585
    tag_hidden_size: int = 768
    tag_num_layers: int = 2
    tag_num_heads: int = 4
    tag_intermediate_size: int = 3072
    tag_layer_norm_eps: float = 1e-12
    threshold: float = 0.68  # for every tag without a per-class threshold
    resize_antialias: bool = False  # torchvision 0.15 (released code) did not antialias tensor resizes

    def __post_init__(self):
        self.swin_depths = tuple(self.swin_depths)
        self.swin_num_heads = tuple(self.swin_num_heads)

    @property
    def num_tokens(self) -> int:
        """Embedding tokens per image: the pooled token plus the last stage's patch grid."""
        grid = self.image_size // self.patch_size // 2 ** (len(self.swin_depths) - 1)
        return 1 + grid * grid

    @classmethod
    def from_dict(cls, data: dict) -> "RAMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RAMFileError(f"unknown RAM config fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)


@dataclass
class RAMOutput:
    embeddings: torch.Tensor  # [B, num_tokens, embed_dim]
    logits: torch.Tensor  # [B, num_classes]


class RAMTagger(nn.Module):
    """RAM: a Swin encoder whose projected tokens are the image embeddings, plus a tag head.

    Implements :class:`addsr.tagging.Tagger`. ``images`` are ``[B, 3, H, W]`` in ``[0, 1]``; they are
    resized to ``config.image_size`` (bilinear) unless already that size, then ImageNet-normalised.
    """

    def __init__(self, config: RAMConfig, tag_list: Sequence[str], class_thresholds: Sequence[float] | None = None):
        super().__init__()
        if len(tag_list) != config.num_classes:
            raise ValueError(f"the tag list has {len(tag_list)} tags but the config has {config.num_classes} classes")
        thresholds = [config.threshold] * config.num_classes if class_thresholds is None else list(class_thresholds)
        if len(thresholds) != config.num_classes:
            raise ValueError(f"{len(thresholds)} thresholds given for {config.num_classes} classes")
        self.config = config
        self.input_size = config.image_size
        self.tag_list = list(tag_list)
        self.class_thresholds = thresholds
        self.visual_encoder = SwinTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.swin_embed_dim,
            depths=config.swin_depths,
            num_heads=config.swin_num_heads,
            window_size=config.swin_window_size,
            mlp_ratio=config.swin_mlp_ratio,
            qkv_bias=True,
            num_classes=0,
        )
        self.image_proj = nn.Linear(self.visual_encoder.num_features, config.embed_dim)
        self.tag_head = TagHead(
            num_classes=config.num_classes,
            embed_dim=config.embed_dim,
            hidden_size=config.tag_hidden_size,
            num_layers=config.tag_num_layers,
            num_heads=config.tag_num_heads,
            intermediate_size=config.tag_intermediate_size,
            eps=config.tag_layer_norm_eps,
        )
        self.load_reports: tuple[LoadReport, ...] = ()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize (unless already at the input size) and normalise ``[B, 3, H, W]`` images in ``[0, 1]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        weight = self.image_proj.weight
        images = images.to(device=weight.device, dtype=torch.float32)
        size = (self.input_size, self.input_size)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(
                images, size=size, mode="bilinear", align_corners=False, antialias=self.config.resize_antialias
            )
        mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return ((images - mean) / std).to(weight.dtype)

    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[B, 1 + h*w, embed_dim]``: the mean-pooled token, then the patch tokens."""
        tokens = self.visual_encoder.forward_features(self.preprocess(images)).flatten(1, 2)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return self.image_proj(tokens)

    def forward(self, images: torch.Tensor) -> RAMOutput:
        embeddings = self.embeddings(images)
        return RAMOutput(embeddings=embeddings, logits=self.tag_head(embeddings))

    def decode_tags(self, logits: torch.Tensor) -> list[str]:
        """Per image, the tags whose probability exceeds their threshold, in tag-list order, joined with ", "."""
        thresholds = torch.tensor(self.class_thresholds, device=logits.device)
        selected = torch.sigmoid(logits.float()) > thresholds
        return [", ".join(self.tag_list[i] for i in row.nonzero().flatten().tolist()) for row in selected]

    @torch.no_grad()
    def tags(self, images: torch.Tensor) -> list[str]:
        """One comma-separated tag string per image."""
        return self.decode_tags(self(images).logits)

    @torch.no_grad()
    def tags_and_embeddings(self, images: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """:meth:`tags` and :meth:`embeddings` of the same images from one pass through the Swin encoder."""
        output = self(images)
        return self.decode_tags(output.logits), output.embeddings

    @classmethod
    def from_checkpoints(
        cls,
        ram: str | Path,
        dape: str | Path | None = None,
        *,
        tag_list: str | Path,
        tag_thresholds: str | Path | None = None,
        config: RAMConfig | None = None,
        strict: bool = False,
    ) -> "RAMTagger":
        """Build from RAM's released files, merging SeeSR's DAPE LoRA when ``dape`` is given.

        Missing or mis-shaped parameters raise :class:`RAMFileError`. Keys that are neither used nor
        known to be unused raise with ``strict``, else warn. ``load_reports`` says what became of every key.
        """
        config = config or RAMConfig()
        tags = read_tag_list(tag_list)
        thresholds = None if tag_thresholds is None else read_tag_thresholds(tag_thresholds, len(tags))
        if len(tags) != config.num_classes:
            raise RAMFileError(f"{tag_list} has {len(tags)} tags; the RAM config expects {config.num_classes}.")
        model = cls._uninitialized(config, tags, thresholds)
        expected = {key: value.shape for key, value in model.state_dict().items()}

        ram = Path(ram)
        state, ram_report = convert_ram_state_dict(load_state_dict_file(ram, RAM_FILE_HINT), expected, ram)
        reports = [ram_report]
        if dape is not None:
            dape = Path(dape)
            dape_state = load_state_dict_file(dape, DAPE_FILE_HINT)
            updates, dape_report = convert_dape_state_dict(dape_state, expected, config.tag_num_layers, dape)
            reports.append(dape_report)
            state.update({key: merge_lora(state[key], loras) for key, loras in updates.items() if key in state})
        _check_reports(reports, strict)
        model.load_state_dict(state)
        model.load_reports = tuple(reports)
        return model.eval()

    @classmethod
    def _uninitialized(
        cls, config: RAMConfig, tag_list: Sequence[str], class_thresholds: Sequence[float] | None
    ) -> "RAMTagger":
        """An instance to load weights into: parameters left uninitialised (fast), computed buffers filled."""
        if not hasattr(WindowAttention, "init_non_persistent_buffers"):  # timm too old to rebuild buffers
            return cls(config, tag_list, class_thresholds)
        with torch.device("meta"):
            model = cls(config, tag_list, class_thresholds)
        model.to_empty(device="cpu")
        for module in model.modules():
            if hasattr(module, "init_non_persistent_buffers"):
                module.init_non_persistent_buffers()
        return model

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json``, ``model.safetensors``, ``tag_list.txt`` and ``tag_thresholds.txt``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}
        with _atomic_path(directory / WEIGHTS_NAME) as path:
            save_file(tensors, path, metadata={"format": "pt"})
        with _atomic_path(directory / CONFIG_NAME) as path:
            path.write_text(json.dumps(asdict(self.config), indent=2) + "\n", encoding="utf-8")
        with _atomic_path(directory / TAG_LIST_NAME) as path:
            path.write_text("".join(f"{tag}\n" for tag in self.tag_list), encoding="utf-8")
        with _atomic_path(directory / TAG_THRESHOLDS_NAME) as path:
            path.write_text("".join(f"{value!r}\n" for value in self.class_thresholds), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "RAMTagger":
        """Load a folder written by :meth:`save_pretrained`."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME, TAG_LIST_NAME, TAG_THRESHOLDS_NAME):
            if not (directory / name).is_file():
                raise RAMFileError(f"{directory / name} is missing; expected a RAMTagger.save_pretrained folder.")
        config = RAMConfig.from_dict(json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8")))
        tags = read_tag_list(directory / TAG_LIST_NAME)
        model = cls._uninitialized(config, tags, read_tag_thresholds(directory / TAG_THRESHOLDS_NAME, len(tags)))
        try:
            result = model.load_state_dict(load_file(directory / WEIGHTS_NAME), strict=False)
        except (SafetensorError, RuntimeError) as error:
            raise RAMFileError(f"cannot load {directory / WEIGHTS_NAME}: {error}") from error
        if result.missing_keys or result.unexpected_keys:
            raise RAMFileError(
                f"{directory / WEIGHTS_NAME} does not match {directory / CONFIG_NAME}: "
                f"missing {result.missing_keys}, unexpected {result.unexpected_keys}"
            )
        return model.eval()


def _check_reports(reports: list[LoadReport], strict: bool) -> None:
    problems = [f"{report.source}: {problem}" for report in reports for problem in report.problems()]
    if problems:
        raise RAMFileError(
            f"the files do not hold a complete RAM model ({len(problems)} problems):\n  "
            + "\n  ".join(problems[:20] + ([f"... {len(problems) - 20} more"] if len(problems) > 20 else []))
            + f"\nExpected {RAM_FILE_HINT} and, if given, {DAPE_FILE_HINT}."
        )
    unexpected = [report for report in reports if report.unexpected]
    if unexpected:
        message = "keys neither used nor known to be unused:\n" + "\n".join(r.summary() for r in unexpected)
        if strict:
            raise RAMFileError(message)
        warnings.warn(message, stacklevel=3)


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path`` that replaces it when the block succeeds."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
