"""Rotated-box IoU (BEV and 3D) for many box pairs at once, in numpy.

The intersection area of two convex quadrilaterals is a boundary integral (Green's theorem) over the parts
of each one's edges that lie inside the other. In the frame of the other box, clipping an edge to it is the
Liang-Barsky test against an axis-aligned rectangle, so everything runs on fixed-size (K, 4) arrays without
sorting or branching. Pairs are first gated twice: by centre distance (the boxes' circumcircles) and by an
exact upper bound of the IoU from the separating axes, so only pairs that may reach a threshold get here.
"""

from __future__ import annotations

import numpy as np

EPS_LEN = 1e-9  # m: an edge this close to an edge line of the other box lies on it
SIGNS = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])  # corners, counter-clockwise


def bev_corners(centre_xy: np.ndarray, size: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Corners of rotated rectangles in the xy plane, counter-clockwise.

    Args:
        centre_xy: <float64: K, 2> centres.
        size: <float64: K, 3> (w, l, h); the box's x axis runs along l.
        yaw: <float64: K> heading of the box's x axis.

    Returns:
        <float64: K, 4, 2> corners.
    """
    local = SIGNS[None] * np.stack([size[:, 1], size[:, 0]], axis=1)[:, None, :] / 2  # (K, 4, 2)
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    return np.stack([x, y], axis=-1) + centre_xy[:, None, :]


def _clip_to_rectangle(x0, y0, dx, dy, half_l, half_w, shared_edges: bool):
    """Liang-Barsky: the parameter interval [lo, hi] of segments p + t d, t in [0, 1], inside a rectangle.

    Args:
        x0, y0, dx, dy: <float64: K, 4> segment starts and directions, in the rectangle's frame.
        half_l, half_w: <float64: K, 1> the rectangle [-half_l, half_l] x [-half_w, half_w].
        shared_edges: Whether a segment lying on the rectangle's boundary and running the same way as the
            rectangle's (counter-clockwise) edge counts as inside. Other boundary segments never count.

    Returns:
        (lo, hi, keep): <float64: K, 4>, <float64: K, 4>, <bool: K, 4>.
    """
    intervals = []
    for start, delta, half, across in ((x0, dx, half_l, dy), (y0, dy, half_w, -dx)):
        with np.errstate(divide="ignore", invalid="ignore"):
            t0, t1 = (-half - start) / delta, (half - start) / delta
        enter, leave = np.minimum(t0, t1), np.maximum(t0, t1)
        if not (np.abs(np.abs(start) - half) <= EPS_LEN).any():  # no start on either line: nothing lies on one
            intervals.append((enter, leave))
            continue
        end = start + delta
        # A segment on the boundary line +half (or -half) runs the rectangle's way if it goes +across (-across).
        for bound, sign in ((half, 1.0), (-half, -1.0)):
            on = (np.abs(start - bound) <= EPS_LEN) & (np.abs(end - bound) <= EPS_LEN)
            counted = on & shared_edges & (sign * across > 0)
            enter = np.where(on, np.where(counted, -np.inf, np.inf), enter)
            leave = np.where(on, np.where(counted, np.inf, -np.inf), leave)
        intervals.append((enter, leave))
    (ex, lx), (ey, ly) = intervals
    lo = np.maximum(np.maximum(ex, ey), 0.0)
    hi = np.minimum(np.minimum(lx, ly), 1.0)
    return lo, hi, hi > lo  # NaN (a start exactly on a line it runs along, off the rectangle) compares False


def _frame(cx, cy, yaw):
    """Points of one frame into another: x' = R(-yaw) (x - c), as a function of (x, y)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return lambda x, y: (c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy))


def intersection_area(centre_b: np.ndarray, yaw_b: np.ndarray, half_a: np.ndarray, half_b: np.ndarray) -> np.ndarray:
    """Areas of a ∩ b for rectangles a (axis-aligned at the origin) and b (in a's frame).

    Args:
        centre_b: <float64: K, 2> centre of b in a's frame.
        yaw_b: <float64: K> yaw of b relative to a.
        half_a: <float64: K, 2> (l/2, w/2) of a.
        half_b: <float64: K, 2> (l/2, w/2) of b.

    Returns:
        <float64: K> areas.
    """
    ha_l, ha_w = half_a[:, :1], half_a[:, 1:]
    hb_l, hb_w = half_b[:, :1], half_b[:, 1:]
    ax, ay = SIGNS[None, :, 0] * ha_l, SIGNS[None, :, 1] * ha_w  # (K, 4) corners of a, a's frame
    c, s = np.cos(yaw_b)[:, None], np.sin(yaw_b)[:, None]
    lx, ly = SIGNS[None, :, 0] * hb_l, SIGNS[None, :, 1] * hb_w
    bx, by = centre_b[:, :1] + lx * c - ly * s, centre_b[:, 1:] + lx * s + ly * c  # corners of b, a's frame
    area = np.zeros(len(centre_b))
    for (px, py), other_half, to_other, shared in (
        ((ax, ay), (hb_l, hb_w), _frame(centre_b[:, :1], centre_b[:, 1:], yaw_b[:, None]), True),
        ((bx, by), (ha_l, ha_w), lambda x, y: (x, y), False),
    ):
        dx, dy = np.roll(px, -1, axis=1) - px, np.roll(py, -1, axis=1) - py
        qx, qy = to_other(px, py)  # the clipping happens in the other box's frame
        qdx, qdy = np.roll(qx, -1, axis=1) - qx, np.roll(qy, -1, axis=1) - qy
        lo, hi, keep = _clip_to_rectangle(qx, qy, qdx, qdy, *other_half, shared)
        lo, hi = np.where(keep, lo, 0.0), np.where(keep, hi, 0.0)
        sx, sy, ex, ey = px + lo * dx, py + lo * dy, px + hi * dx, py + hi * dy  # a's frame for the integral
        area += 0.5 * np.where(keep, sx * ey - sy * ex, 0.0).sum(axis=1)
    return np.maximum(area, 0.0)


def _relative(ta: np.ndarray, yaw_a: np.ndarray, tb: np.ndarray, yaw_b: np.ndarray):
    """Centre (K, 2) and yaw (K,) of b in a's frame."""
    d = tb[:, :2] - ta[:, :2]
    c, s = np.cos(yaw_a), np.sin(yaw_a)
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1), yaw_b - yaw_a


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
    centre, yaw = _relative(ta, yaw_a, tb, yaw_b)
    inter = intersection_area(centre, yaw, sa[:, [1, 0]] / 2, sb[:, [1, 0]] / 2)
    area_a, area_b = sa[:, 0] * sa[:, 1], sb[:, 0] * sb[:, 1]
    bev = inter / (area_a + area_b - inter)
    top = np.minimum(ta[:, 2] + sa[:, 2] / 2, tb[:, 2] + sb[:, 2] / 2)
    bottom = np.maximum(ta[:, 2] - sa[:, 2] / 2, tb[:, 2] - sb[:, 2] / 2)
    inter3d = inter * np.maximum(top - bottom, 0.0)
    iou3d = inter3d / (area_a * sa[:, 2] + area_b * sb[:, 2] - inter3d)
    return bev, iou3d


def may_overlap(ta: np.ndarray, sa: np.ndarray, tb: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """The cheapest gate: False where the xy centre distance exceeds the sum of the half diagonals (IoU 0).

    Args:
        ta, tb: <float64: K, 3> centres.
        sa, sb: <float64: K, 3> sizes.

    Returns:
        <bool: K> pairs that may overlap.
    """
    d = ta[:, :2] - tb[:, :2]
    reach = (np.hypot(sa[:, 0], sa[:, 1]) + np.hypot(sb[:, 0], sb[:, 1])) / 2
    return d[:, 0] ** 2 + d[:, 1] ** 2 <= reach**2


def bev_iou_upper_bound(
    ta: np.ndarray, sa: np.ndarray, yaw_a: np.ndarray, tb: np.ndarray, sb: np.ndarray, yaw_b: np.ndarray
) -> np.ndarray:
    """An upper bound of the BEV IoU (which also bounds the 3D IoU), from the separating axes.

    a ∩ b lies in a ∩ (b's bounding rectangle in a's axes), and in the same with the roles swapped; the
    smaller of the two rectangle areas bounds the intersection. Args as `pair_iou`.

    Returns:
        <float64: K> bounds >= the BEV IoU.
    """
    area_a, area_b = sa[:, 0] * sa[:, 1], sb[:, 0] * sb[:, 1]
    bound = np.minimum(area_a, area_b)
    for (t1, s1, y1), (t2, s2, y2) in (((ta, sa, yaw_a), (tb, sb, yaw_b)), ((tb, sb, yaw_b), (ta, sa, yaw_a))):
        centre, yaw = _relative(t1, y1, t2, y2)
        c, s = np.abs(np.cos(yaw)), np.abs(np.sin(yaw))
        ext_x = (s2[:, 1] * c + s2[:, 0] * s) / 2  # half extents of box 2 along box 1's axes
        ext_y = (s2[:, 1] * s + s2[:, 0] * c) / 2
        ov_x = np.minimum(s1[:, 1] / 2, centre[:, 0] + ext_x) - np.maximum(-s1[:, 1] / 2, centre[:, 0] - ext_x)
        ov_y = np.minimum(s1[:, 0] / 2, centre[:, 1] + ext_y) - np.maximum(-s1[:, 0] / 2, centre[:, 1] - ext_y)
        bound = np.minimum(bound, np.maximum(ov_x, 0.0) * np.maximum(ov_y, 0.0))
    return bound / (area_a + area_b - bound)
