"""Shared transformer trunk: one stack of pre-norm blocks for every token kind, told apart by type embeddings.

Camera BEV tokens, LiDAR BEV tokens (and, with scene QA, text tokens) run through the same weights; `shared=False`
gives each kind its own stack, for the ablation. BEV maps go through in local windows of their valid cells
(`forward_bev`, on `pack_windows`), so the cost is linear in the number of valid cells.

With `shift=True` the blocks take Swin's shifted windows (Liu et al. 2021), moved by half a window, on the first
block and every other one after it. The point encoder's first layer and the fusion's local attention cut the map on
the unshifted grid, so with a one-block unshifted trunk two neighbouring cells on either side of a window edge meet,
after the encoders, only in the head's 3x3 convolutions: an 11 m bus in 12.8 m windows almost always straddles one.
At the CPU default it did not pay (docs/benchmarks.md, **Shifted windows in the trunk**)."""

from __future__ import annotations

import torch
from torch import nn

from fusion.models.node_types import TOKEN_KINDS
from fusion.models.transformer import Block
from fusion.models.windows import (
    gather_nodes,
    node_index,
    nodes_of_bev,
    pack_windows,
    scatter_nodes,
    scatter_to_bev,
)


class Trunk(nn.Module):
    """Tokens <N, T, dim> of one kind -> <N, T, dim>."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, kinds: tuple[str, ...] = TOKEN_KINDS,
                 shared: bool = True, window: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 shift: bool = False):  # fmt: skip
        super().__init__()
        self.kinds, self.shared, self.window, self.out_dim = tuple(kinds), shared, window, dim
        if shift and window < 2:
            raise ValueError(f"shifted windows need window >= 2, got {window}")
        # the window grid's offset in cells for each block of `forward_bev`: half a window on blocks 0, 2, ...
        self.shifts = tuple((window // 2) * ((i + 1) % 2) if shift else 0 for i in range(depth))
        self.type_embed = nn.Embedding(len(self.kinds), dim)
        stacks = 1 if shared else len(self.kinds)
        self.stacks = nn.ModuleList(
            nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)) for _ in range(stacks)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, kind: str, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`key_mask` <N, T> marks real tokens; every row needs at least one."""
        k = self.kinds.index(kind)
        x = x + self.type_embed.weight[k]
        for block in self.stacks[0 if self.shared else k]:
            x = block(x, key_mask)
        return self.norm(x)

    def forward_bev(self, bev: torch.Tensor, valid: torch.Tensor, kind: str) -> torch.Tensor:
        """BEV map <B, C, Y, X> with its valid cells <B, Y, X> -> <B, C, Y, X>, zero at invalid cells. Each local
        window's valid cells are packed side by side (`pack_windows`): empty cells and windows cost nothing."""
        b, _, y, x = bev.shape
        k = self.kinds.index(kind)
        cell, node_id = node_index(valid)
        nodes = nodes_of_bev(bev, cell) + self.type_embed.weight[k]  # (N, C)
        slots = {}  # the windows holding a valid cell, (A, K) node slots, per window offset
        for shift in sorted(set(self.shifts)):
            windows = pack_windows(node_id, self.window, "local", shift)
            slots[shift] = windows.node[windows.occupied()]
        if len(nodes):
            for block, shift in zip(self.stacks[0 if self.shared else k], self.shifts, strict=True):
                slot = slots[shift]
                nodes = scatter_nodes(block(gather_nodes(nodes, slot), slot >= 0), slot, len(nodes))
        return scatter_to_bev(self.norm(nodes), cell, (b, y, x)).permute(0, 3, 1, 2).contiguous()
