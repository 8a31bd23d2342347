"""RAM's tag head: a query-to-label decoder in which one learned query per tag attends to the image."""

import torch
import torch.nn.functional as F
from torch import nn


class LabelCrossAttention(nn.Module):
    """Multi-head attention from label queries (``hidden_size``) to image tokens (``context_dim``)."""

    def __init__(self, hidden_size: int, context_dim: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.to_q = nn.Linear(hidden_size, hidden_size)
        self.to_k = nn.Linear(context_dim, hidden_size)
        self.to_v = nn.Linear(context_dim, hidden_size)
        self.to_out = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self._split_heads(self.to_q(queries))
        k, v = self._split_heads(self.to_k(context)), self._split_heads(self.to_v(context))
        attended = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(attended.transpose(1, 2).flatten(2))


class TagDecoderLayer(nn.Module):
    """Cross-attention then feed-forward, each with a residual and a post-LayerNorm (BERT style, no self-attention)."""

    def __init__(self, hidden_size: int, context_dim: int, num_heads: int, intermediate_size: int, eps: float):
        super().__init__()
        self.attn = LabelCrossAttention(hidden_size, context_dim, num_heads)
        self.norm1 = nn.LayerNorm(hidden_size, eps=eps)
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        queries = self.norm1(queries + self.attn(queries, context))
        return self.norm2(queries + self.fc2(F.gelu(self.fc1(queries))))


class TagHead(nn.Module):
    """Per-tag logits ``[B, num_classes]`` from image embeddings ``[B, N, embed_dim]``.

    Each tag has a label embedding (``embed_dim``), projected to ``hidden_size`` and passed through a
    ReLU to form its query; the queries attend to the image embeddings through the decoder layers and
    a shared linear classifier gives one logit per tag.
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        eps: float,
    ):
        super().__init__()
        self.label_embed = nn.Parameter(torch.randn(num_classes, embed_dim) * 0.02)
        self.label_proj = nn.Linear(embed_dim, hidden_size) if embed_dim != hidden_size else nn.Identity()
        self.layers = nn.ModuleList(
            TagDecoderLayer(hidden_size, embed_dim, num_heads, intermediate_size, eps) for _ in range(num_layers)
        )
        self.classifier = nn.Linear(hidden_size, 1)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        queries = F.relu(self.label_proj(self.label_embed))
        queries = queries.unsqueeze(0).expand(image_embeds.shape[0], -1, -1)
        for layer in self.layers:
            queries = layer(queries, image_embeds)
        return self.classifier(queries).squeeze(-1)
