"""Draw boxes on camera images and LiDAR bird's-eye views (PIL), one colour per detection class.

Annotations (GT) are drawn solid and thin, predictions dashed and thicker, and highlighted boxes (the objects a scene
QA answer is grounded on) get a thick magenta outline under their class colour.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from fusion.data.browse import BoxView

CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "car": (255, 158, 0), "truck": (255, 99, 71), "bus": (255, 127, 80), "trailer": (255, 140, 0),
    "construction_vehicle": (233, 150, 70), "pedestrian": (0, 0, 230), "motorcycle": (255, 61, 99),
    "bicycle": (220, 20, 60), "traffic_cone": (47, 79, 79), "barrier": (112, 128, 144),
}  # fmt: skip
OTHER = (160, 160, 160)
HIGHLIGHT = (255, 0, 255)
# Box corner order of the devkit's `Box.corners()`: 0-3 front face, 4-7 back face.
_EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


@dataclass(frozen=True)
class Style:
    width: int = 2
    dash: float = 0.0  # dash length in pixels; 0 draws solid lines


GT_STYLE = Style(width=1)
PRED_STYLE = Style(width=3, dash=7.0)


def colour_of(name: str) -> tuple[int, int, int]:
    return CLASS_COLOURS.get(name, OTHER)


def _line(draw: ImageDraw.ImageDraw, p: Sequence[float], q: Sequence[float], colour, style: Style) -> None:
    if style.dash <= 0:
        draw.line([tuple(p), tuple(q)], fill=colour, width=style.width)
        return
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    length = float(np.hypot(*(q - p)))
    if not np.isfinite(length) or length > 1e5:
        return
    n = max(int(length // style.dash), 1)
    ts = np.linspace(0.0, 1.0, n + 1)
    for a, b in zip(ts[0:-1:2], ts[1::2], strict=False):  # every other dash
        draw.line([tuple(p + a * (q - p)), tuple(p + b * (q - p))], fill=colour, width=style.width)


def draw_camera_boxes(image: np.ndarray, boxes: Sequence[BoxView], style: Style = GT_STYLE,
                      highlight: Collection[str] = ()) -> np.ndarray:  # fmt: skip
    """The image <uint8: H, W, 3> with each box's 12 edges drawn (front face marked with a cross)."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for box in boxes:
        colour = colour_of(box.name)
        uv = box.corners.T
        if box.token in highlight:
            for i, j in _EDGES:
                draw.line([tuple(uv[i]), tuple(uv[j])], fill=HIGHLIGHT, width=style.width + 4)
        for i, j in _EDGES:
            _line(draw, uv[i], uv[j], colour, style)
        _line(draw, uv[0], uv[2], colour, Style(1, style.dash))
        _line(draw, uv[1], uv[3], colour, Style(1, style.dash))
    return np.asarray(canvas)


def bev_points(points: np.ndarray, extent: float = 50.0, size: int = 600) -> np.ndarray:
    """A white picture <uint8: size, size, 3> with the points (x right, y forward; coloured by height)."""
    scale = size / (2 * extent)
    canvas = np.full((size, size, 3), 255, np.uint8)
    cols = ((points[:, 0] + extent) * scale).astype(np.int64)
    rows = ((extent - points[:, 1]) * scale).astype(np.int64)
    keep = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
    height = np.clip((points[keep, 2] + 2.0) / 4.0, 0, 1)[:, None]
    canvas[rows[keep], cols[keep]] = np.array([40, 70, 160]) * (1 - height) + np.array([30, 170, 120]) * height
    return canvas


def draw_bev_boxes(canvas: np.ndarray, boxes: Sequence[BoxView], style: Style = GT_STYLE,
                   highlight: Collection[str] = (), extent: float = 50.0) -> np.ndarray:  # fmt: skip
    """Box footprints <2, 4> (metres, view frame) on a BEV picture from `bev_points`, with a heading tick."""
    size = canvas.shape[0]
    scale = size / (2 * extent)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for box in boxes:
        xy = np.stack([(box.corners[0] + extent) * scale, (extent - box.corners[1]) * scale], axis=1)  # (4, 2)
        if not np.isfinite(xy).all() or np.abs(xy).max() > 10 * size:
            continue
        colour = colour_of(box.name)
        if box.token in highlight:
            draw.polygon([tuple(p) for p in xy], outline=HIGHLIGHT, width=style.width + 4)
        for k in range(4):
            _line(draw, xy[k], xy[(k + 1) % 4], colour, style)
        # Bottom corners 0, 1 are the front face: a tick from the centre to the front.
        _line(draw, xy.mean(axis=0), (xy[0] + xy[1]) / 2, colour, Style(style.width))
    return np.asarray(image)


def draw_ego(canvas: np.ndarray) -> np.ndarray:
    image = Image.fromarray(canvas)
    c = canvas.shape[0] / 2
    ImageDraw.Draw(image).polygon([(c, c - 8), (c - 5, c + 6), (c + 5, c + 6)], fill=(220, 0, 0))  # forward up
    return np.asarray(image)


def draw_bev(points: np.ndarray, boxes: Sequence[BoxView], extent: float = 50.0, size: int = 600,
             predictions: Sequence[BoxView] = (), highlight: Collection[str] = ()) -> np.ndarray:  # fmt: skip
    """A bird's-eye view <uint8: size, size, 3>: points, GT footprints (solid), predictions (dashed), the ego.

    `points` <n, >=3> and box corners are in metres in the same frame, the ego at the centre, forward up.
    """
    canvas = bev_points(points, extent, size)
    canvas = draw_bev_boxes(canvas, boxes, GT_STYLE, highlight, extent)
    canvas = draw_bev_boxes(canvas, predictions, PRED_STYLE, highlight, extent)
    return draw_ego(canvas)


def legend_html(names: Sequence[str] = tuple(CLASS_COLOURS)) -> str:
    """An HTML legend: class colours, and how GT, predictions and QA-grounded boxes are drawn."""
    swatches = " ".join(
        f'<span style="display:inline-block;margin-right:10px"><span style="display:inline-block;width:12px;'
        f'height:12px;background:rgb{colour_of(n)};vertical-align:middle"></span> {n}</span>'
        for n in names
    )
    styles = (f"GT: thin solid line · prediction: thick dashed line · <span style='color:rgb{HIGHLIGHT}'>magenta "
              "outline</span>: object a QA answer is grounded on")  # fmt: skip
    return f"<div style='font-size:13px'>{swatches}<br>{styles}</div>"
