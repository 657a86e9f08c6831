"""Draw boxes on camera images and LiDAR bird's-eye views (PIL), one colour per detection class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from fusion.data.browse import BoxView

CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "car": (255, 158, 0), "truck": (255, 99, 71), "bus": (255, 127, 80), "trailer": (255, 140, 0),
    "construction_vehicle": (233, 150, 70), "pedestrian": (0, 0, 230), "motorcycle": (255, 61, 99),
    "bicycle": (220, 20, 60), "traffic_cone": (47, 79, 79), "barrier": (112, 128, 144),
}  # fmt: skip
OTHER = (160, 160, 160)
# Box corner order of the devkit's `Box.corners()`: 0-3 front face, 4-7 back face.
_EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


def draw_camera_boxes(image: np.ndarray, boxes: Sequence[BoxView], width: int = 2) -> np.ndarray:
    """The image <uint8: H, W, 3> with each box's 12 edges drawn (front face marked with a cross)."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for box in boxes:
        colour = CLASS_COLOURS.get(box.name, OTHER)
        uv = box.corners.T
        for i, j in _EDGES:
            draw.line([tuple(uv[i]), tuple(uv[j])], fill=colour, width=width)
        draw.line([tuple(uv[0]), tuple(uv[2])], fill=colour, width=1)
        draw.line([tuple(uv[1]), tuple(uv[3])], fill=colour, width=1)
    return np.asarray(canvas)


def draw_bev(points: np.ndarray, boxes: Sequence[BoxView], extent: float = 50.0, size: int = 600) -> np.ndarray:
    """A bird's-eye view <uint8: size, size, 3>: points (x right, y forward; coloured by height) and box footprints.

    `points` <n, >=3> and box corners are in metres in the same frame, the ego at the centre, forward up.
    """
    scale = size / (2 * extent)
    canvas = np.full((size, size, 3), 255, np.uint8)
    cols = ((points[:, 0] + extent) * scale).astype(np.int64)
    rows = ((extent - points[:, 1]) * scale).astype(np.int64)
    keep = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
    height = np.clip((points[keep, 2] + 2.0) / 4.0, 0, 1)[:, None]
    canvas[rows[keep], cols[keep]] = np.array([40, 70, 160]) * (1 - height) + np.array([30, 170, 120]) * height
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for box in boxes:
        xy = [((x + extent) * scale, (extent - y) * scale) for x, y in box.corners.T]
        draw.polygon(xy, outline=CLASS_COLOURS.get(box.name, OTHER), width=2)
        front = ((xy[0][0] + xy[1][0]) / 2, (xy[0][1] + xy[1][1]) / 2)
        centre = (sum(p[0] for p in xy) / 4, sum(p[1] for p in xy) / 4)
        draw.line([centre, front], fill=CLASS_COLOURS.get(box.name, OTHER), width=2)
    c = size / 2
    draw.polygon([(c, c - 8), (c - 5, c + 6), (c + 5, c + 6)], fill=(220, 0, 0))  # the ego, pointing forward
    return np.asarray(image)
