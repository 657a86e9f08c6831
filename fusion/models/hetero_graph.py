"""The BEV fusion graph as a torch-geometric `HeteroData`: one node per valid BEV cell of each modality.

Edges join every pair of nodes (of any types, self-loops included) that share a local window (relation "local") or
a dilated grid group (relation "grid"); each edge carries the relative-position index of its two cells. Built with
window/grid partitions of a node-id map, so no Python loop runs over cells or groups.
"""

from __future__ import annotations

import torch
from torch_geometric.data import HeteroData

from fusion.models.node_types import RELATIONS
from fusion.models.windows import grid_partition, relative_position_index, window_partition

_PARTITIONS = {"local": window_partition, "grid": grid_partition}


def build_graph(bev: dict[str, torch.Tensor], valid: dict[str, torch.Tensor], window: int) -> HeteroData:
    """bev: <B, C, Y, X> per node type; valid: <B, Y, X> the cells that are nodes of that type.

    data[t].x <N_t, C>, data[t].cell <int64: N_t> (flat index b * Y * X + iy * X + ix);
    data[s, rel, t].edge_index <2, E> (source node, target node), data[s, rel, t].rel <int64: E>.
    """
    data = HeteroData()
    ids = {}
    for t, feats in bev.items():
        b, c, y, x = feats.shape
        cell = valid[t].flatten().nonzero().squeeze(1)
        data[t].x = feats.permute(0, 2, 3, 1).reshape(-1, c)[cell]  # (N_t, C)
        data[t].cell = cell
        node_id = torch.full((b * y * x,), -1, dtype=torch.long, device=feats.device)
        ids[t] = node_id.index_put((cell,), torch.arange(len(cell), device=feats.device)).view(b, y, x)
    rel_index = relative_position_index(window).to(next(iter(bev.values())).device)
    for rel in RELATIONS:
        tables = {t: _PARTITIONS[rel](node_id, window) for t, node_id in ids.items()}  # (G, T) node id or -1
        for s in bev:
            for t in bev:
                pairs = (tables[t][:, :, None] >= 0) & (tables[s][:, None, :] >= 0)  # (G, T target, T source)
                g, i, j = pairs.nonzero(as_tuple=True)
                data[s, rel, t].edge_index = torch.stack([tables[s][g, j], tables[t][g, i]])
                data[s, rel, t].rel = rel_index[i, j]
    return data


def scatter_to_bev(x: torch.Tensor, cell: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Node features <N, C> at flat cells <N> -> channel-last map <B, Y, X, C>, zero elsewhere."""
    b, y, xx = shape
    return x.new_zeros(b * y * xx, x.shape[1]).index_put((cell,), x).view(b, y, xx, -1)
