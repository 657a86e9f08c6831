"""The BEV fusion graph as a torch-geometric `HeteroData`: one node per valid BEV cell of each modality.

Edges join every pair of nodes (of any types, self-loops included) that share a local window (relation "local") or
a dilated grid group (relation "grid"); each edge carries the relative-position index of its two cells. Built with
window/grid partitions of a node-id map, so no Python loop runs over cells or groups.
"""

from __future__ import annotations

import torch
from torch_geometric.data import HeteroData

from fusion.models.node_types import RELATIONS
from fusion.models.windows import PARTITIONS, node_index, nodes_of_bev, relative_position_index


def build_graph(bev: dict[str, torch.Tensor], valid: dict[str, torch.Tensor], window: int) -> HeteroData:
    """bev: <B, C, Y, X> per node type; valid: <B, Y, X> the cells that are nodes of that type.

    data[t].x <N_t, C>, data[t].cell <int64: N_t> (flat index b * Y * X + iy * X + ix);
    data[s, rel, t].edge_index <2, E> (source node, target node), data[s, rel, t].rel <int64: E>.
    """
    data = HeteroData()
    ids = {}
    for t, feats in bev.items():
        cell, ids[t] = node_index(valid[t])
        data[t].x = nodes_of_bev(feats, cell)  # (N_t, C)
        data[t].cell = cell
    rel_index = relative_position_index(window).to(next(iter(bev.values())).device)
    for rel in RELATIONS:
        tables = {t: PARTITIONS[rel](node_id, window) for t, node_id in ids.items()}  # (G, T) node id or -1
        for s in bev:
            for t in bev:
                pairs = (tables[t][:, :, None] >= 0) & (tables[s][:, None, :] >= 0)  # (G, T target, T source)
                g, i, j = pairs.nonzero(as_tuple=True)
                data[s, rel, t].edge_index = torch.stack([tables[s][g, j], tables[t][g, i]])
                data[s, rel, t].rel = rel_index[i, j]
    return data
