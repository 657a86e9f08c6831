"""Rotated-box IoU (BEV and 3D) for many box pairs at once, in numpy.

The intersection area of two rectangles is a boundary integral (Green's theorem) over the parts of each one's
edges that lie inside the other. In the frame of the other box, clipping an edge to it is the Liang-Barsky test
against an axis-aligned rectangle, so everything runs on fixed-size (4, K) arrays without sorting or branching.
Only the inside fraction of each edge is needed: an edge piece [t0, t1] of a rectangle centred at the origin
adds (t1 - t0) * half_l * half_w to the area (the triangle it spans with the centre), and moving the other
rectangle's pieces into this frame adds cross(centre, piece). Callers gate pairs first by centre distance (the
boxes' circumcircles), so only pairs that may overlap get here.
"""

from __future__ import annotations

import numpy as np

EPS_LEN = 1e-9  # m: an edge this close to an edge line of the other box lies on it
SIGNS = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])  # corners, counter-clockwise
_SX, _SY = SIGNS[:, :1], SIGNS[:, 1:]  # (4, 1): corner k = centre + SX_k e + SY_k f
_D = np.array([[-2.0], [-2.0], [2.0], [2.0]])  # edge k runs -2e, -2f, +2e, +2f (e for even k, f for odd)


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


def _clip_axis(start, delta, half, across, shared: bool):
    """Liang-Barsky on one axis: the parameter interval (enter, leave) of segments p + t d inside |x| <= half.

    Args:
        start, delta: <float64: 4, K> segment starts and directions along the axis.
        half: <float64: K> the slab's half width.
        across: <float64: 4, K> the directions along the other axis (the sense of a segment on the boundary).
        shared: Whether a segment lying on the slab's boundary and running the same way as the rectangle's
            (counter-clockwise) edge counts as inside. Other boundary segments never count.

    Returns:
        (enter, leave): <float64: 4, K> each; NaN where a start lies exactly on a line it runs along.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = np.subtract(-half, start)
        t0 /= delta
        t1 = np.subtract(half, start)
        t1 /= delta
    enter, leave = np.minimum(t0, t1), np.maximum(t0, t1, out=t1)
    near = np.abs(start)
    near -= half
    if not (np.abs(near, out=near) <= EPS_LEN).any():  # no start on either line: nothing lies on one
        return enter, leave
    end = start + delta
    # A segment on the boundary line +half (or -half) runs the rectangle's way if it goes +across (-across).
    for bound, sign in ((half, 1.0), (-half, -1.0)):
        on = (np.abs(start - bound) <= EPS_LEN) & (np.abs(end - bound) <= EPS_LEN)
        counted = on & shared & (sign * across > 0)
        enter = np.where(on, np.where(counted, -np.inf, np.inf), enter)
        leave = np.where(on, np.where(counted, np.inf, -np.inf), leave)
    return enter, leave


def edge_fractions(cx, cy, c, s, half_l, half_w, other_l, other_w, shared: bool) -> np.ndarray:
    """The fraction of each edge of rectangle r that lies inside the axis-aligned rectangle o at the origin.

    Args:
        cx, cy: <float64: K> centre of r in o's frame.
        c, s: <float64: K> cosine and sine of r's yaw in o's frame.
        half_l, half_w: <float64: K> half length (along r's x axis) and half width of r.
        other_l, other_w: <float64: K> o = [-other_l, other_l] x [-other_w, other_w].
        shared: See `_clip_axis`.

    Returns:
        <float64: 4, K> in [0, 1]; edge k runs from corner k to corner k + 1 (`SIGNS`, counter-clockwise).
    """
    ex, ey, fx, fy = half_l * c, half_l * s, -half_w * s, half_w * c  # r's half axes e, f in o's frame
    qx = _SX * ex + _SY * fx  # (4, K) corners
    qx += cx
    qy = _SX * ey + _SY * fy
    qy += cy
    dx = np.stack([ex, fx, ex, fx])  # edge directions, `_D`
    dx *= _D
    dy = np.stack([ey, fy, ey, fy])
    dy *= _D
    enter_x, leave_x = _clip_axis(qx, dx, other_l, dy, shared)
    enter_y, leave_y = _clip_axis(qy, dy, other_w, np.negative(dx, out=dx), shared)
    lo = np.maximum(enter_x, enter_y, out=enter_x)
    np.maximum(lo, 0.0, out=lo)
    hi = np.minimum(leave_x, leave_y, out=leave_x)
    np.minimum(hi, 1.0, out=hi)
    hi -= lo
    return np.fmax(hi, 0.0, out=hi)  # NaN (a start exactly on a line it runs along, off the rectangle) -> 0


def intersection_area(cx, cy, c, s, ha_l, ha_w, hb_l, hb_w) -> np.ndarray:
    """Areas of a ∩ b for rectangles a (axis-aligned at the origin) and b (in a's frame).

    Args:
        cx, cy: <float64: K> centre of b in a's frame.
        c, s: <float64: K> cosine and sine of b's yaw relative to a.
        ha_l, ha_w: <float64: K> half length and half width of a.
        hb_l, hb_w: <float64: K> the same of b.

    Returns:
        <float64: K> areas.
    """
    # a's edges clipped in b's frame (a's centre there is R(-yaw) (-c)); their pieces, in a's frame, span
    # triangles with a's centre of area (t1 - t0) ha_l ha_w.
    frac_a = edge_fractions(-(c * cx + s * cy), s * cx - c * cy, c, -s, ha_l, ha_w, hb_l, hb_w, True)
    frac_b = edge_fractions(cx, cy, c, s, hb_l, hb_w, ha_l, ha_w, False)
    # b's pieces p + t d, moved from b's centre to a's: cross(centre + p + t0 d, centre + p + t1 d) / 2
    # = (t1 - t0) (hb_l hb_w + cross(centre, d) / 2), with d = -2e, -2f, 2e, 2f.
    cross_e = hb_l * (cx * s - cy * c)
    cross_f = hb_w * (cx * c + cy * s)
    area = ha_l * ha_w * (frac_a[0] + frac_a[1] + frac_a[2] + frac_a[3])
    area += hb_l * hb_w * (frac_b[0] + frac_b[1] + frac_b[2] + frac_b[3])
    area += cross_e * (frac_b[2] - frac_b[0])
    area += cross_f * (frac_b[3] - frac_b[1])
    return np.maximum(area, 0.0, out=area)


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
    cols = [np.ascontiguousarray(x) for x in (*ta.T, *sa.T, yaw_a, *tb.T, *sb.T, yaw_b)]
    return pair_iou_columns(cols[:7], cols[7:])


def pair_iou_columns(a: list, b: list) -> tuple[np.ndarray, np.ndarray]:
    """`pair_iou` on columns: a = [x, y, z, w, l, h, yaw] of the first boxes, each <float64: K>, b the same."""
    xa, ya, za, wa, la, ha, yaw_a = a
    xb, yb, zb, wb, lb, hb, yaw_b = b
    c, s = np.cos(yaw_a), np.sin(yaw_a)
    dx, dy = xb - xa, yb - ya
    yaw = yaw_b - yaw_a
    inter = intersection_area(
        c * dx + s * dy, c * dy - s * dx, np.cos(yaw), np.sin(yaw), la / 2, wa / 2, lb / 2, wb / 2
    )
    area_a, area_b = wa * la, wb * lb
    bev = inter / (area_a + area_b - inter)
    top = np.minimum(za + ha / 2, zb + hb / 2)
    bottom = np.maximum(za - ha / 2, zb - hb / 2)
    inter3d = inter * np.maximum(top - bottom, 0.0)
    iou3d = inter3d / (area_a * ha + area_b * hb - inter3d)
    return bev, iou3d
