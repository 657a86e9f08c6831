"""Token embeddings of the unified QA encoder: words (BERT style: token + position) and objects (features +
geometry, as 3D-VisTA's object tokens: semantic feature + location embedding)."""

from __future__ import annotations

import torch
from torch import nn

GEOMETRY = 9  # x, y, z, log w, log l, log h, sin yaw, cos yaw, distance (normalised)


class TextEmbedding(nn.Module):
    """ids <B, T> -> <B, T, dim>."""

    def __init__(self, vocab_size: int, dim: int, max_len: int = 64, dropout: float = 0.0):
        super().__init__()
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.drop(self.norm(self.token(ids) + self.position(pos)))


def geometry(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes <..., 7> (lidar frame, metres) -> normalised geometry <..., 9>."""
    xyz, size, yaw = boxes[..., :3], boxes[..., 3:6].clamp(min=1e-2), boxes[..., 6]
    dist = boxes[..., :2].norm(dim=-1, keepdim=True)
    return torch.cat([xyz[..., :2] / 25.0, xyz[..., 2:] / 2.0, size.log(), yaw.sin()[..., None],
                      yaw.cos()[..., None], dist / 25.0], -1)  # fmt: skip


POSITION_STEP = 2.0  # metres between the radial-basis centres of `position_code`
POSITION_CENTRES = torch.arange(-50.0, 50.0 + POSITION_STEP, POSITION_STEP)  # x and y; distance uses the >= 0 half
POSITION_CODE = 2 * len(POSITION_CENTRES) + int((POSITION_CENTRES >= 0).sum())


def position_code(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes <..., 7> -> <..., POSITION_CODE>: x, y and the distance from the ego, each as radial-basis activations
    every 2 m (width 2 m). A half-plane such as "more than 2 m to the left" is then a linear function with weights of
    order 1; on the raw coordinates it needs a slope that ~2000 optimisation steps do not reach (the relation part
    of a filter was read at 0.7 from them, even on the training questions)."""
    c = POSITION_CENTRES.to(boxes.device)
    dist = boxes[..., :2].norm(dim=-1)
    codes = [boxes[..., 0, None] - c, boxes[..., 1, None] - c, dist[..., None] - c[c >= 0]]
    return torch.cat([torch.exp(-0.5 * (d / POSITION_STEP) ** 2) for d in codes], -1)


class ObjectEmbedding(nn.Module):
    """Object features <B, M, F> + boxes <B, M, 7> -> <B, M, dim>; `masked` <B, M> swaps the features of masked
    objects for a learnt [MASK] vector (masked object modelling keeps their location, as 3D-VisTA).

    The last `appearance_dim` features (the image colours and the LiDAR appearance of `fusion.qa.objects`) get their
    own MLP, summed with the detector features' and the location's: concatenated with the ~80 detector values, the
    17 colour values were drowned out (a probe read colours at 0.75 from them alone, 0.52 from everything).
    """

    def __init__(self, feature_dim: int, dim: int, dropout: float = 0.0, appearance_dim: int = 0):
        super().__init__()
        # No input LayerNorm: it would rescale the colour values by the statistics of the ~80 BEV / head values of
        # the same object, blurring colours (a probe on the cached tokens read colours worse with it).
        self.feature_dim, self.appearance_dim = feature_dim, appearance_dim
        self.feature = nn.Sequential(nn.Linear(feature_dim - appearance_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.appearance = (
            nn.Sequential(nn.Linear(appearance_dim, dim), nn.GELU(), nn.Linear(dim, dim)) if appearance_dim else None
        )
        self.location = nn.Sequential(nn.Linear(GEOMETRY, dim), nn.GELU(), nn.Linear(dim, dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        a = self.appearance_dim
        if self.appearance is None:
            f = self.feature(features)  # (B, M, dim)
        else:
            f = self.feature(features[..., :-a]) + self.appearance(features[..., -a:])
        if masked is not None:
            f = torch.where(masked[..., None], self.mask_token.expand_as(f), f)
        return self.drop(self.norm(f + self.location(geometry(boxes))))
