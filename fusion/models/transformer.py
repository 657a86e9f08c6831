"""Pre-norm transformer block (nanoGPT style) with a key-padding mask, on `scaled_dot_product_attention`.

Used by the point encoder (inside windows) and the shared trunk. Reference: Vaswani et al. 2017; karpathy/nanoGPT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(dim, int(dim * ratio))
        self.proj = nn.Linear(int(dim * ratio), dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Attention(nn.Module):
    """Multi-head self-attention over <N, T, C>; `key_mask` <N, T> marks the tokens that may be attended to."""

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} is not divisible by heads {heads}"
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (N, nh, T, hs)
        mask = (
            None if key_mask is None else key_mask[:, None, None, :]
        )  # (N, 1, 1, T), broadcast over heads and queries
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(n, t, c))  # (N, T, C)


class Block(nn.Module):
    """x = x + attn(ln(x)); x = x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_mask)
        return x + self.mlp(self.ln_2(x))
