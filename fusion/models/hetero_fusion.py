"""HM-ViT-style heterogeneous fusion of the camera and LiDAR BEV maps (Xiang et al. 2023, "HM-ViT").

Each block runs local window attention then dilated global grid attention (MaxViT's block/grid split), each followed
by a feed-forward layer; attention, norms and feed-forward layers are all node-type specific. A cell is a camera node
where some camera sees it and a LiDAR node where it holds points; a missing modality simply contributes no nodes.
`backend="graph"` runs on torch-geometric `HeteroData` (reference), `backend="dense"` on each group's nodes packed
into padded windows (fast: empty cells and groups cost nothing); the two agree to float precision. The fused map
merges the node types present at each cell: their mean (`merge="mean"`), or the sum of each type's own linear
projection (`merge="project"`, node-type-specific like every other layer here; no bias, so that a cell without nodes
stays zero; each starts as the identity, so that a lone type passes through unchanged, as with the mean).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fusion.models.hetero_attention import HeteroAttention
from fusion.models.hetero_graph import build_graph
from fusion.models.node_types import NODE_TYPES, RELATIONS
from fusion.models.transformer import MLP
from fusion.models.windows import node_index, nodes_of_bev, pack_windows, scatter_to_bev

# one relation's attention (the relation, its module, normed node features <N_t, C> per type) on a graph or windows
Attend = Callable[[str, HeteroAttention, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
_TYPED = lambda make, types: nn.ModuleDict({t: make() for t in types})  # noqa: E731  one module per node type


class HeteroFusionBlock(nn.Module):
    """x_t = x_t + local_attn(ln(x))_t; x_t = x_t + ffn_t(ln(x_t)); then the same with grid attention."""

    def __init__(self, dim: int = 64, heads: int = 4, window: int = 4, mlp_ratio: float = 2.0,
                 node_types: tuple[str, ...] = NODE_TYPES):  # fmt: skip
        super().__init__()
        self.window = window
        self.attn = nn.ModuleDict({r: HeteroAttention(dim, heads, window, node_types) for r in RELATIONS})
        self.ln_attn = nn.ModuleDict({r: _TYPED(lambda: nn.LayerNorm(dim), node_types) for r in RELATIONS})
        self.ln_ffn = nn.ModuleDict({r: _TYPED(lambda: nn.LayerNorm(dim), node_types) for r in RELATIONS})
        self.ffn = nn.ModuleDict({r: _TYPED(lambda: MLP(dim, mlp_ratio), node_types) for r in RELATIONS})

    def forward(self, x_dict: dict[str, torch.Tensor], attend: Attend) -> dict[str, torch.Tensor]:
        """x_dict: <N_t, C> per node type; `attend(relation, attention, x_dict)` runs one relation's attention on the
        graph or on the packed windows."""
        for rel in RELATIONS:
            a = attend(rel, self.attn[rel], {t: self.ln_attn[rel][t](v) for t, v in x_dict.items()})
            x_dict = {t: v + a[t] for t, v in x_dict.items()}
            x_dict = {t: v + self.ffn[rel][t](self.ln_ffn[rel][t](v)) for t, v in x_dict.items()}
        return x_dict


class HeteroFusion(nn.Module):
    """BEV maps <B, C, Y, X> + valid cells <B, Y, X> per node type -> fused BEV <B, C, Y, X>."""

    def __init__(self, dim: int = 64, depth: int = 1, heads: int = 4, window: int = 4, mlp_ratio: float = 2.0,
                 backend: str = "dense", node_types: tuple[str, ...] = NODE_TYPES, merge: str = "mean"):  # fmt: skip
        super().__init__()
        if backend not in ("dense", "graph"):
            raise ValueError(f"backend must be 'dense' or 'graph', got {backend!r}")
        if merge not in ("mean", "project"):
            raise ValueError(f"merge must be 'mean' or 'project', got {merge!r}")
        self.backend, self.window, self.node_types, self.out_dim = backend, window, tuple(node_types), dim
        self.blocks = nn.ModuleList(HeteroFusionBlock(dim, heads, window, mlp_ratio, node_types) for _ in range(depth))
        self.norm = _TYPED(lambda: nn.LayerNorm(dim), node_types)
        self.project = _TYPED(lambda: nn.Linear(dim, dim, bias=False), node_types) if merge == "project" else None
        for linear in (self.project or {}).values():  # each starts as the identity: the fused map, the types' sum
            nn.init.eye_(linear.weight)

    def forward(self, bev: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.forward_dense(bev, valid) if self.backend == "dense" else self.forward_graph(bev, valid)
        if self.project is not None:  # each type's own projection, summed over the types present
            total = sum(self.project[t](x[t]) * valid[t][..., None] for t in x)  # (B, Y, X, C)
        else:
            count = sum(valid[t].float() for t in x).clamp(min=1)[..., None]
            total = sum(x[t] * valid[t][..., None] for t in x) / count
        return total.permute(0, 3, 1, 2).contiguous()  # (B, C, Y, X)

    def forward_dense(self, bev: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per node type <B, Y, X, C>, zero at non-nodes. Each type's nodes are packed group by group once
        (`pack_windows`); attention and the node-wise layers run on the nodes alone."""
        cells, x_dict, windows = {}, {}, {rel: {} for rel in RELATIONS}
        for t in self.node_types:
            cells[t], node_id = node_index(valid[t])
            x_dict[t] = nodes_of_bev(bev[t], cells[t])  # (N_t, C)
            for rel in RELATIONS:
                windows[rel][t] = pack_windows(node_id, self.window, rel)
        return self._run(x_dict, cells, bev, lambda rel, attn, h: attn.forward_dense(h, windows[rel]))

    def forward_graph(self, bev: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The same through `HeteroData`; per node type <B, Y, X, C>, zero at non-nodes."""
        data = build_graph({t: bev[t] for t in self.node_types}, valid, self.window)
        edges = {rel: {e: data[e].edge_index for e in data.edge_types if e[1] == rel} for rel in RELATIONS}
        rels = {rel: {e: data[e].rel for e in data.edge_types if e[1] == rel} for rel in RELATIONS}
        cells = {t: data[t].cell for t in self.node_types}
        return self._run(data.x_dict, cells, bev, lambda rel, attn, h: attn(h, edges[rel], rels[rel]))

    def _run(self, x_dict: dict[str, torch.Tensor], cells: dict[str, torch.Tensor], bev: dict[str, torch.Tensor],
             attend: Attend) -> dict[str, torch.Tensor]:  # fmt: skip
        for block in self.blocks:
            x_dict = block(x_dict, attend)
        b, _, y, xx = bev[self.node_types[0]].shape
        return {t: scatter_to_bev(self.norm[t](x_dict[t]), cells[t], (b, y, xx)) for t in self.node_types}
