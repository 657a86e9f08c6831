"""Rotated-box IoU (BEV and 3D) for many box pairs at once, in numpy.

The intersection of two convex quadrilaterals is the convex polygon whose vertices are the corners of each
box inside the other plus the crossings of their edges: at most 4 + 4 + 16 = 24 candidate points per pair.
The valid points are sorted by angle around their mean and the area follows from the shoelace formula. All
of it runs on fixed-size (K, 24, 2) arrays. Coordinates are taken relative to the pair's first box centre, so
the global frame's large coordinates cost no precision.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-9


def bev_corners(centre_xy: np.ndarray, size: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Corners of rotated rectangles in the xy plane, counter-clockwise.

    Args:
        centre_xy: <float64: K, 2> centres.
        size: <float64: K, 3> (w, l, h); the box's x axis runs along l.
        yaw: <float64: K> heading of the box's x axis.

    Returns:
        <float64: K, 4, 2> corners.
    """
    half_l, half_w = size[:, 1] / 2, size[:, 0] / 2
    signs = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])  # counter-clockwise
    local = signs[None, :, :] * np.stack([half_l, half_w], axis=1)[:, None, :]  # (K, 4, 2)
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    return np.stack([x, y], axis=-1) + centre_xy[:, None, :]


def _inside(points: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Whether points lie in (or on) counter-clockwise convex quads: <bool: K, M> for points (K, M, 2)."""
    edge = np.roll(quad, -1, axis=1) - quad  # (K, 4, 2)
    rel = points[:, :, None, :] - quad[:, None, :, :]  # (K, M, 4, 2)
    cross = edge[:, None, :, 0] * rel[..., 1] - edge[:, None, :, 1] * rel[..., 0]
    scale = np.linalg.norm(edge, axis=-1)[:, None, :]
    return np.all(cross >= -EPS * scale, axis=-1)


def intersection_area(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Areas of the intersections of pairs of convex quads.

    Args:
        a: <float64: K, 4, 2> counter-clockwise corners of the first boxes.
        b: <float64: K, 4, 2> counter-clockwise corners of the second boxes.

    Returns:
        <float64: K> areas.
    """
    k = len(a)
    if k == 0:
        return np.zeros(0)
    da = np.roll(a, -1, axis=1) - a  # (K, 4, 2) edge vectors
    db = np.roll(b, -1, axis=1) - b
    # Edge i of a against edge j of b: a_i + t da_i = b_j + u db_j.
    denom = da[:, :, None, 0] * db[:, None, :, 1] - da[:, :, None, 1] * db[:, None, :, 0]  # (K, 4, 4)
    rel = b[:, None, :, :] - a[:, :, None, :]  # (K, 4, 4, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (rel[..., 0] * db[:, None, :, 1] - rel[..., 1] * db[:, None, :, 0]) / denom
        u = (rel[..., 0] * da[:, :, None, 1] - rel[..., 1] * da[:, :, None, 0]) / denom
    crossing = (np.abs(denom) > EPS) & (t >= -EPS) & (t <= 1 + EPS) & (u >= -EPS) & (u <= 1 + EPS)
    cross_pts = a[:, :, None, :] + np.where(crossing, t, 0.0)[..., None] * da[:, :, None, :]  # (K, 4, 4, 2)
    points = np.concatenate([a, b, cross_pts.reshape(k, 16, 2)], axis=1)  # (K, 24, 2)
    valid = np.concatenate([_inside(a, b), _inside(b, a), crossing.reshape(k, 16)], axis=1)
    count = valid.sum(axis=1)
    centre = np.einsum("km,kmd->kd", valid.astype(float), points) / np.maximum(count, 1)[:, None]
    rel_pts = points - centre[:, None, :]
    angle = np.where(valid, np.arctan2(rel_pts[..., 1], rel_pts[..., 0]), np.inf)
    order = np.argsort(angle, axis=1)
    poly = np.take_along_axis(rel_pts, order[..., None], axis=1)
    ok = np.take_along_axis(valid, order, axis=1)
    poly = np.where(ok[..., None], poly, poly[:, :1, :])  # pad with the first vertex: zero-area edges
    nxt = np.roll(poly, -1, axis=1)
    area = 0.5 * np.sum(poly[..., 0] * nxt[..., 1] - poly[..., 1] * nxt[..., 0], axis=1)
    return np.where(count >= 3, np.maximum(area, 0.0), 0.0)


def pair_iou(
    ta: np.ndarray, sa: np.ndarray, yaw_a: np.ndarray, tb: np.ndarray, sb: np.ndarray, yaw_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """BEV and 3D IoU of box pairs (a_k, b_k).

    Args:
        ta, tb: <float64: K, 3> centres.
        sa, sb: <float64: K, 3> sizes (w, l, h).
        yaw_a, yaw_b: <float64: K> yaws.

    Returns:
        (bev, iou3d): <float64: K> each.
    """
    origin = ta[:, :2]
    inter = intersection_area(bev_corners(ta[:, :2] - origin, sa, yaw_a), bev_corners(tb[:, :2] - origin, sb, yaw_b))
    area_a, area_b = sa[:, 0] * sa[:, 1], sb[:, 0] * sb[:, 1]
    bev = inter / (area_a + area_b - inter)
    top = np.minimum(ta[:, 2] + sa[:, 2] / 2, tb[:, 2] + sb[:, 2] / 2)
    bottom = np.maximum(ta[:, 2] - sa[:, 2] / 2, tb[:, 2] - sb[:, 2] / 2)
    inter3d = inter * np.maximum(top - bottom, 0.0)
    iou3d = inter3d / (area_a * sa[:, 2] + area_b * sb[:, 2] - inter3d)
    return bev, iou3d


def may_overlap(ta: np.ndarray, sa: np.ndarray, tb: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """The cheap gate: False where the xy centre distance exceeds the sum of the half diagonals (IoU is 0).

    Args:
        ta, tb: <float64: K, 3> centres.
        sa, sb: <float64: K, 3> sizes.

    Returns:
        <bool: K> pairs that need the polygon computation.
    """
    d = ta[:, :2] - tb[:, :2]
    reach = (np.hypot(sa[:, 0], sa[:, 1]) + np.hypot(sb[:, 0], sb[:, 1])) / 2
    return d[:, 0] ** 2 + d[:, 1] ** 2 <= reach**2
