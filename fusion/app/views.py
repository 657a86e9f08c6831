"""Everything the app shows of one sample: six cameras and a BEV with GT and predicted boxes, a 3D view, and tables.

Pure functions of a `Browser`, the sample token and the boxes; the Gradio layer only wires them to components.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import numpy as np

from fusion.data.browse import CAMERA_ORDER, Boxes3D, Browser
from fusion.evaluation.rotated_iou import pair_iou
from fusion.viz.draw import GT_STYLE, PRED_STYLE, draw_bev, draw_camera_boxes

DETECTION_HEADERS = ["class", "score", "distance (m)", "speed (m/s)", "BEV IoU with best GT", "best GT class"]
ANNOTATION_HEADERS = ["class", "attribute", "distance (m)", "speed (m/s)", "LiDAR pts", "visibility"]


@dataclass(frozen=True)
class Overlay:
    """What to draw over the sensor data besides the annotations: predictions, and QA-grounded objects (boxes that
    are not annotations) plus the tokens of annotations to highlight."""

    predictions: Boxes3D | None = None
    grounded: Boxes3D | None = None
    highlight: frozenset[str] = frozenset()


def empty_boxes() -> Boxes3D:
    return Boxes3D((), (), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 2)), np.zeros(0))


def _highlight(overlay: Overlay) -> frozenset[str]:
    extra = overlay.grounded.tokens if overlay.grounded is not None else ()
    return overlay.highlight | frozenset(extra)


def cameras(browser: Browser, token: str, gt: Boxes3D, overlay: Overlay) -> list[tuple[np.ndarray, str]]:
    """The six camera images, GT thin and solid, predictions thick and dashed, grounded objects outlined."""
    lit = _highlight(overlay)
    out = []
    for channel in CAMERA_ORDER:
        image = draw_camera_boxes(browser.camera_image(token, channel), browser.project(token, channel, gt),
                                  GT_STYLE, lit)  # fmt: skip
        for boxes, style in ((overlay.predictions, PRED_STYLE), (overlay.grounded, GT_STYLE)):
            if boxes is not None and len(boxes):
                image = draw_camera_boxes(image, browser.project(token, channel, boxes), style, lit)
        out.append((image, channel))
    return out


def bev(browser: Browser, token: str, gt: Boxes3D, overlay: Overlay, points: np.ndarray) -> np.ndarray:
    """The LiDAR bird's-eye view (ego at the centre, forward up) with the same boxes as the cameras."""
    preds = [*browser.footprints(token, overlay.predictions or empty_boxes()),
             *browser.footprints(token, overlay.grounded or empty_boxes())]  # fmt: skip
    return draw_bev(points, browser.footprints(token, gt), predictions=preds, highlight=_highlight(overlay))


def scene_glb(browser: Browser, token: str, gt: Boxes3D, overlay: Overlay, points: np.ndarray, path: str) -> str:
    """The 3D view (points, GT, predictions, grounded objects) in the view frame, written to `path` (.glb)."""
    from fusion.viz.scene3d import write_scene_glb

    m = browser.view_from_global(token)
    sets = []
    for boxes, width in ((gt, 0.06), (overlay.predictions, 0.14), (overlay.grounded, 0.06)):
        if boxes is not None and len(boxes):
            sets.append((boxes.corners() @ m[:3, :3].T + m[:3, 3], boxes.names, boxes.tokens, width))
    return write_scene_glb(path, points, sets, _highlight(overlay))


def best_gt_iou(preds: Boxes3D, gt: Boxes3D) -> tuple[np.ndarray, list[str]]:
    """For each prediction, the highest BEV IoU with a GT box of its class, <float64: P>, and that GT's class
    ("" when none overlaps)."""
    p, g = len(preds), len(gt)
    if p == 0 or g == 0:
        return np.zeros(p), [""] * p
    pi, gi = np.repeat(np.arange(p), g), np.tile(np.arange(g), p)  # all pairs, prediction-major
    iou = pair_iou(preds.centre[pi], preds.size[pi], preds.yaw[pi], gt.centre[gi], gt.size[gi], gt.yaw[gi])[0]
    same = np.array(preds.names)[pi] == np.array(gt.names)[gi]
    iou = np.where(same, iou, 0.0).reshape(p, g)
    best = iou.argmax(axis=1)
    value = iou[np.arange(p), best]
    return value, [gt.names[b] if v > 0 else "" for b, v in zip(best, value, strict=True)]


def detection_rows(browser: Browser, token: str, preds: Boxes3D, gt: Boxes3D) -> list[list]:
    """One row per prediction (best score first): class, score, distance from the ego, speed, BEV IoU with the best
    GT box of its class and that box's class."""
    iou, gt_class = best_gt_iou(preds, gt)
    ego = browser.ego_translation(token)
    distance = np.linalg.norm(preds.centre[:, :2] - ego[:2], axis=1)
    speed = np.linalg.norm(preds.velocity, axis=1)
    order = np.argsort(-preds.scores, kind="stable")
    return [[preds.names[i], round(float(preds.scores[i]), 3), round(float(distance[i]), 1),
             round(float(speed[i]), 2), round(float(iou[i]), 3), gt_class[i]] for i in order]  # fmt: skip


def annotation_rows(browser: Browser, token: str) -> list[list]:
    return [list(r.values()) for r in browser.annotations(token)]


@dataclass(frozen=True)
class SampleViews:
    cameras: list[tuple[np.ndarray, str]]
    bev: np.ndarray
    glb: str | None
    detections: list[list]
    annotations: list[list]


def render_sample(browser: Browser, token: str, overlay: Overlay = Overlay(), nsweeps: int = 1,
                  glb_dir: str | None = None) -> SampleViews:  # fmt: skip
    """All views of one sample; the 3D view is written under `glb_dir` (skipped when None)."""
    browser.check_sample(token)
    gt = browser.annotation_boxes(token)
    points = browser.points(token, nsweeps)
    glb = None
    if glb_dir is not None:
        glb = scene_glb(
            browser, token, gt, overlay, points, os.path.join(glb_dir, f"{token}-{uuid.uuid4().hex[:12]}.glb")
        )
    preds = overlay.predictions if overlay.predictions is not None else empty_boxes()
    return SampleViews(cameras(browser, token, gt, overlay), bev(browser, token, gt, overlay, points), glb,
                       detection_rows(browser, token, preds, gt), annotation_rows(browser, token))  # fmt: skip
