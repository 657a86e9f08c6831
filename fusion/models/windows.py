"""Partition channel-last BEV maps into local windows (Swin) or dilated grid groups (MaxViT), and back.

A local window holds the `size x size` neighbouring cells; a grid group holds `size x size` cells spaced Y/size and
X/size apart, so attention inside grid groups reaches across the whole map. Token t of a group sits at offset
(t // size, t % size) in group units in both cases, which is what the relative position bias indexes.
"""

from __future__ import annotations

import torch


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


def grid_reverse(w: torch.Tensor, size: int, b: int, y: int, x: int) -> torch.Tensor:
    """Inverse of `grid_partition`."""
    rest = w.shape[2:]
    w = w.reshape(b, y // size, x // size, size, size, *rest)
    w = w.permute(0, 3, 1, 4, 2, *range(5, 5 + len(rest)))  # (B, s, Y/s, s, X/s, *rest)
    return w.reshape(b, y, x, *rest)


def relative_position_index(size: int) -> torch.Tensor:
    """<int64: T, T> index into a (2 size - 1)^2 bias table of the offset between tokens i and j (T = size^2)."""
    coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).flatten(1)  # (2, T)
    rel = coords[:, :, None] - coords[:, None, :] + size - 1  # (2, T, T), each in [0, 2 size - 2]
    return rel[0] * (2 * size - 1) + rel[1]
