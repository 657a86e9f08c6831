"""HM-ViT-style heterogeneous fusion of the camera and LiDAR BEV maps (Xiang et al. 2023, "HM-ViT").

Each block runs local window attention then dilated global grid attention (MaxViT's block/grid split), each followed
by a feed-forward layer; attention, norms and feed-forward layers are all node-type specific. A cell is a camera node
where some camera sees it and a LiDAR node where it holds points; a missing modality simply contributes no nodes.
`backend="graph"` runs on torch-geometric `HeteroData` (reference), `backend="dense"` on masked windows (fast);
the two agree to float precision. The fused map averages the node types present at each cell.
"""

from __future__ import annotations

import torch
from torch import nn

from fusion.models.hetero_attention import HeteroAttention
from fusion.models.hetero_graph import build_graph, scatter_to_bev
from fusion.models.node_types import NODE_TYPES
from fusion.models.transformer import MLP
from fusion.models.windows import grid_partition, grid_reverse, window_partition, window_reverse

_TYPED = lambda make, types: nn.ModuleDict({t: make() for t in types})  # noqa: E731  one module per node type


class HeteroFusionBlock(nn.Module):
    """x_t = x_t + local_attn(ln(x))_t; x_t = x_t + ffn_t(ln(x_t)); then the same with grid attention."""

    def __init__(self, dim: int = 64, heads: int = 4, window: int = 4, mlp_ratio: float = 2.0,
                 node_types: tuple[str, ...] = NODE_TYPES):  # fmt: skip
        super().__init__()
        self.window = window
        self.attn = nn.ModuleDict({r: HeteroAttention(dim, heads, window, node_types) for r in ("local", "grid")})
        self.ln_attn = nn.ModuleDict({r: _TYPED(lambda: nn.LayerNorm(dim), node_types) for r in ("local", "grid")})
        self.ln_ffn = nn.ModuleDict({r: _TYPED(lambda: nn.LayerNorm(dim), node_types) for r in ("local", "grid")})
        self.ffn = nn.ModuleDict({r: _TYPED(lambda: MLP(dim, mlp_ratio), node_types) for r in ("local", "grid")})

    def forward_dense(self, x: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """x: <B, Y, X, C> per node type, zero at non-nodes; valid: <B, Y, X>."""
        b, y, xx, _ = next(iter(x.values())).shape
        for rel, part, unpart in (("local", window_partition, window_reverse), ("grid", grid_partition, grid_reverse)):
            h = {t: part(self.ln_attn[rel][t](x[t]), self.window) for t in x}  # (G, T, C)
            m = {t: part(valid[t], self.window) for t in x}  # (G, T)
            a = self.attn[rel].forward_dense(h, m)
            x = {t: x[t] + unpart(a[t], self.window, b, y, xx) * valid[t][..., None] for t in x}
            x = {t: x[t] + self.ffn[rel][t](self.ln_ffn[rel][t](x[t])) * valid[t][..., None] for t in x}
        return x

    def forward_graph(
        self, x_dict: dict[str, torch.Tensor], edge_index_dict: dict, rel_dict: dict
    ) -> dict[str, torch.Tensor]:
        """x_dict: <N_t, C> per node type; edges and relative-position indices as `build_graph` makes them."""
        for rel in ("local", "grid"):
            edges = {e: v for e, v in edge_index_dict.items() if e[1] == rel}
            rels = {e: v for e, v in rel_dict.items() if e[1] == rel}
            a = self.attn[rel]({t: self.ln_attn[rel][t](v) for t, v in x_dict.items()}, edges, rels)
            x_dict = {t: v + a[t] for t, v in x_dict.items()}
            x_dict = {t: v + self.ffn[rel][t](self.ln_ffn[rel][t](v)) for t, v in x_dict.items()}
        return x_dict


class HeteroFusion(nn.Module):
    """BEV maps <B, C, Y, X> + valid cells <B, Y, X> per node type -> fused BEV <B, C, Y, X>."""

    def __init__(self, dim: int = 64, depth: int = 1, heads: int = 4, window: int = 4, mlp_ratio: float = 2.0,
                 backend: str = "dense", node_types: tuple[str, ...] = NODE_TYPES):  # fmt: skip
        super().__init__()
        if backend not in ("dense", "graph"):
            raise ValueError(f"backend must be 'dense' or 'graph', got {backend!r}")
        self.backend, self.window, self.node_types, self.out_dim = backend, window, tuple(node_types), dim
        self.blocks = nn.ModuleList(HeteroFusionBlock(dim, heads, window, mlp_ratio, node_types) for _ in range(depth))
        self.norm = _TYPED(lambda: nn.LayerNorm(dim), node_types)

    def forward(self, bev: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.forward_dense(bev, valid) if self.backend == "dense" else self.forward_graph(bev, valid)
        total = sum(x[t] * valid[t][..., None] for t in x)  # (B, Y, X, C)
        count = sum(valid[t].float() for t in x).clamp(min=1)[..., None]
        return (total / count).permute(0, 3, 1, 2).contiguous()  # (B, C, Y, X)

    def forward_dense(self, bev: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per node type <B, Y, X, C>, zero at non-nodes."""
        x = {t: bev[t].permute(0, 2, 3, 1) * valid[t][..., None] for t in self.node_types}
        for block in self.blocks:
            x = block.forward_dense(x, valid)
        return {t: self.norm[t](x[t]) * valid[t][..., None] for t in x}

    def forward_graph(self, bev: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The same through `HeteroData`; per node type <B, Y, X, C>, zero at non-nodes."""
        data = build_graph({t: bev[t] for t in self.node_types}, valid, self.window)
        x_dict, rel_dict = data.x_dict, {e: data[e].rel for e in data.edge_types}
        for block in self.blocks:
            x_dict = block.forward_graph(x_dict, data.edge_index_dict, rel_dict)
        b, _, y, xx = bev[self.node_types[0]].shape
        return {t: scatter_to_bev(self.norm[t](x_dict[t]), data[t].cell, (b, y, xx)) for t in self.node_types}
