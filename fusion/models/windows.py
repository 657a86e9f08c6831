"""Partition channel-last BEV maps into local windows (Swin) or dilated grid groups (MaxViT), and back.

A local window holds the `size x size` neighbouring cells; a grid group holds `size x size` cells spaced Y/size and
X/size apart, so attention inside grid groups reaches across the whole map. Token t of a group sits at offset
(t // size, t % size) in group units in both cases, which is what the relative position bias indexes.

`pack_windows` lays out the nodes of a sparse map (the valid cells) group by group, padded only to the fullest
group: the dense attention paths of the trunk and the fusion run on it, so empty cells and empty groups cost nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def window_partition(x: torch.Tensor, size: int) -> torch.Tensor:
    """<B, Y, X, *rest> -> <B * Y/size * X/size, size * size, *rest>."""
    b, y, xx, *rest = x.shape
    x = x.reshape(b, y // size, size, xx // size, size, *rest)
    x = x.transpose(2, 3)  # (B, Y/s, X/s, s, s, *rest)
    return x.reshape(b * (y // size) * (xx // size), size * size, *rest)


def window_reverse(w: torch.Tensor, size: int, b: int, y: int, x: int) -> torch.Tensor:
    """Inverse of `window_partition`: <B * nW, size * size, *rest> -> <B, Y, X, *rest>."""
    rest = w.shape[2:]
    w = w.reshape(b, y // size, x // size, size, size, *rest).transpose(2, 3)  # (B, Y/s, s, X/s, s, *rest)
    return w.reshape(b, y, x, *rest)


def grid_partition(x: torch.Tensor, size: int) -> torch.Tensor:
    """<B, Y, X, *rest> -> <B * Y/size * X/size, size * size, *rest>, each group a dilated size x size grid."""
    b, y, xx, *rest = x.shape
    x = x.reshape(b, size, y // size, size, xx // size, *rest)
    x = x.permute(0, 2, 4, 1, 3, *range(5, 5 + len(rest)))  # (B, Y/s, X/s, s, s, *rest)
    return x.reshape(b * (y // size) * (xx // size), size * size, *rest)


def relative_position_index(size: int) -> torch.Tensor:
    """<int64: T, T> index into a (2 size - 1)^2 bias table of the offset between tokens i and j (T = size^2)."""
    coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).flatten(1)  # (2, T)
    rel = coords[:, :, None] - coords[:, None, :] + size - 1  # (2, T, T), each in [0, 2 size - 2]
    return rel[0] * (2 * size - 1) + rel[1]


PARTITIONS = {"local": window_partition, "grid": grid_partition}  # relation -> how its groups are cut


def node_index(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid cells of <B, Y, X> as nodes: their flat cells <int64: N> (b * Y * X + iy * X + ix, ascending) and the
    node id of every cell <int64: B, Y, X> (-1 where no node)."""
    cell = valid.flatten().nonzero().squeeze(1)
    node_id = torch.full((valid.numel(),), -1, dtype=torch.long, device=valid.device)
    return cell, node_id.index_put((cell,), torch.arange(len(cell), device=valid.device)).view(valid.shape)


class PackedWindows(NamedTuple):
    """Groups (windows or grid groups) holding only their nodes, padded to the fullest group's count K.

    node <int64: G, K>: the node in each slot, -1 in padding; token <int64: G, K>: where the slot's cell sits in
    its group (what `relative_position_index` indexes), 0 in padding. Nodes keep their order within a group."""

    node: torch.Tensor
    token: torch.Tensor

    def occupied(self) -> torch.Tensor:
        """<int64: A> the groups holding a node."""
        return (self.node[:, 0] >= 0).nonzero().squeeze(1) if self.node.shape[1] else self.node.new_zeros(0)


def pack_windows(node_id: torch.Tensor, size: int, relation: str = "local", shift: int = 0) -> PackedWindows:
    """Pack the nodes of a node-id map <B, Y, X> (`node_index`) into the groups of `relation` ("local" windows of
    size x size cells or dilated "grid" groups): attention over K slots instead of size^2 cells, most of which may
    hold no node (sparse LiDAR cells).

    `shift` (local windows only, 0 <= shift < size) moves the window grid by that many cells along both axes, Swin's
    shifted windows: the window holding cell (y, x) is ((y + shift) // size, (x + shift) // size). The map is padded
    with empty cells rather than rolled, so the windows at its edges are smaller, never wrapped around."""
    if shift:
        if relation != "local" or not 0 < shift < size:
            raise ValueError(f"shift {shift}: only local windows shift, by 0 < shift < size ({size})")
        node_id = F.pad(node_id, (shift, size - shift, shift, size - shift), value=-1)
    table = PARTITIONS[relation](node_id, size)  # (G, T) node id or -1
    present = table >= 0
    k = int(present.sum(1).max()) if table.numel() else 0
    token = torch.argsort((~present).to(torch.uint8), dim=1, stable=True)[:, :k]  # nodes first, in window order
    return PackedWindows(table.gather(1, token), token)


def gather_nodes(x: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
    """Node features <N, C> into slots <int64: A, K> (-1: padding, filled with some node) -> <A, K, C>."""
    return x.index_select(0, node.clamp(min=0).flatten()).view(*node.shape, x.shape[1])


def scatter_nodes(y: torch.Tensor, node: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `gather_nodes` for slots that hold every node once: <A, K, C> -> <n, C>, padding dropped."""
    filled = node >= 0
    return y.new_zeros(n, y.shape[-1]).index_copy(0, node[filled], y[filled])


def nodes_of_bev(bev: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Map <B, C, Y, X> at flat cells <N> (`node_index`) -> node features <N, C>; inverse of `scatter_to_bev`."""
    return bev.permute(0, 2, 3, 1).reshape(-1, bev.shape[1])[cell]


def scatter_to_bev(x: torch.Tensor, cell: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Node features <N, C> at flat cells <N> -> channel-last map <B, Y, X, C>, zero elsewhere."""
    b, y, xx = shape
    return x.new_zeros(b * y * xx, x.shape[1]).index_put((cell,), x).view(b, y, xx, -1)
