"""Tiny RAM taggers and RAM's checkpoint files, built in code, for the tests of the tagger, assembling and training."""

import re
from pathlib import Path

import torch

from addsr.tagging import RAMConfig, RAMTagger

TINY = RAMConfig(
    image_size=32,
    swin_embed_dim=8,
    swin_depths=(1, 2),
    swin_num_heads=(1, 2),
    swin_window_size=2,  # the second stage has a shifted-window block
    embed_dim=12,
    num_classes=6,
    tag_hidden_size=16,
    tag_num_layers=2,
    tag_num_heads=2,
    tag_intermediate_size=32,
)
TAGS = ["cat", "dog", "tree", "sky", "car", "house"]
LORA_RANK = 2
# Our tag-head module names and the BERT names RAM's checkpoint uses for them.
BERT_NAMES = {
    "attn.to_q": "crossattention.self.query",
    "attn.to_k": "crossattention.self.key",
    "attn.to_v": "crossattention.self.value",
    "attn.to_out": "crossattention.output.dense",
    "norm1": "crossattention.output.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "norm2": "output.LayerNorm",
}
# Keys RAM's checkpoint holds that the tagger does not use.
UNUSED_RAM_KEYS = {
    "visual_encoder.layers.0.blocks.0.attn.relative_position_index": torch.zeros(4, 4, dtype=torch.long),
    "visual_encoder.layers.1.blocks.1.attn_mask": torch.zeros(4, 4, 4),
    "tag_encoder.encoder.layer.0.attention.self.query.weight": torch.zeros(16, 16),
    "text_decoder.cls.predictions.bias": torch.zeros(30),
}


def random_tiny_model(seed: int = 0, **kwargs) -> RAMTagger:
    torch.manual_seed(seed)
    model = RAMTagger(TINY, TAGS, **kwargs)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3)
    return model.eval()


def original_layout(model: RAMTagger) -> dict[str, torch.Tensor]:
    """The model's weights under the names of RAM's ``ram_swin_large_14m.pth`` (Swin + BERT naming)."""
    state = {}
    for key, value in model.state_dict().items():
        merge = re.fullmatch(r"visual_encoder\.layers\.(\d+)\.downsample\.(.+)", key)
        layer = re.fullmatch(r"tag_head\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if merge:  # the original Swin merges patches at the end of the previous stage
            name = f"visual_encoder.layers.{int(merge[1]) - 1}.downsample.{merge[2]}"
        elif layer:
            name = f"tagging_head.encoder.layer.{layer[1]}.{BERT_NAMES[layer[2]]}.{layer[3]}"
        elif key.startswith("tag_head."):
            name = {"label_embed": "label_embed", "label_proj": "wordvec_proj", "classifier": "fc"}[key.split(".")[1]]
            name += key.removeprefix(f"tag_head.{key.split('.')[1]}")
        else:
            name = key
        state[name] = value.clone()
    return state | UNUSED_RAM_KEYS


def random_dape(model: RAMTagger) -> dict[str, torch.Tensor]:
    """LoRA weights as SeeSR saves them: Swin qkv (q and v), the tag head's query/key, captioning parts."""
    torch.manual_seed(1)
    dape = {}
    for key, value in model.state_dict().items():
        if key.endswith("attn.qkv.weight"):
            dim = value.shape[1]
            shapes = {"lora_A": (2 * LORA_RANK, dim), "lora_B": (2 * dim, LORA_RANK)}
            name = key.removesuffix(".weight")
        elif re.search(r"tag_head\.layers\.\d+\.attn\.to_[qk]\.weight", key):
            shapes = {"lora_A": (LORA_RANK, value.shape[1]), "lora_B": (value.shape[0], LORA_RANK)}
            layer, part = re.search(r"layers\.(\d+)\.attn\.to_([qk])", key).groups()
            name = f"tagging_head.encoder.layer.{layer}.crossattention.self.{'query' if part == 'q' else 'key'}"
        else:
            continue
        dape |= {f"{name}.{part}": torch.randn(shape) * 0.3 for part, shape in shapes.items()}
    # RAM ties the first tag-encoder layers to the tag head: their LoRA lands on the tag head too.
    tied = "tag_encoder.encoder.layer.0.crossattention.self.query"
    dape |= {f"{tied}.lora_A": torch.randn(LORA_RANK, 16) * 0.3, f"{tied}.lora_B": torch.randn(16, LORA_RANK) * 0.3}
    dape["text_decoder.bert.encoder.layer.0.attention.self.query.lora_A"] = torch.randn(LORA_RANK, 16)
    return dape


def write_files(directory: Path, model: RAMTagger, thresholds: list[float] | None = None) -> dict[str, Path]:
    paths = {"ram": directory / "ram.pth", "tags": directory / "tags.txt", "thresholds": directory / "thresholds.txt"}
    torch.save({"model": original_layout(model), "epoch": 3}, paths["ram"])
    paths["tags"].write_text("\n".join(TAGS) + "\n")
    paths["thresholds"].write_text("\n".join(str(t) for t in thresholds or [0.68] * len(TAGS)) + "\n")
    return paths
