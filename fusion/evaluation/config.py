"""The evaluation vocabulary and the nuScenes detection config (`detection_cvpr_2019`).

Class and attribute names are the devkit's (`nuscenes/eval/detection/constants.py`); a test checks that they
stay equal. The config is read from the devkit's own JSON file without importing the devkit, so that the
warm evaluation path (GT cache on disk) never pays the devkit's import cost.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

DETECTION_NAMES: tuple[str, ...] = (
    "car",
    "truck",
    "bus",
    "trailer",
    "construction_vehicle",
    "pedestrian",
    "motorcycle",
    "bicycle",
    "traffic_cone",
    "barrier",
)
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "pedestrian.moving",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "cycle.with_rider",
    "cycle.without_rider",
    "vehicle.moving",
    "vehicle.parked",
    "vehicle.stopped",
)
TP_METRICS: tuple[str, ...] = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")

# nuScenes general category -> detection class (devkit `category_to_detection_name`).
CATEGORY_TO_DETECTION: dict[str, str] = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}
BIKE_RACK_CATEGORY = "static_object.bicycle_rack"
RACK_FILTERED_CLASSES: tuple[str, ...] = ("bicycle", "motorcycle")

IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
IOU_KINDS: tuple[str, ...] = ("bev", "3d")
IOU_ORDERINGS: tuple[str, ...] = ("global", "local")


@dataclass(frozen=True)
class DetectionConfig:
    """The devkit's `DetectionConfig`, as plain data.

    Attributes:
        class_range: Max ego distance (m, xy) per detection class; farther boxes are dropped.
        dist_fcn: Matching function name (only `center_distance` exists).
        dist_ths: Centre-distance thresholds of the AP (m).
        dist_th_tp: The threshold whose matches give the TP errors.
        min_recall: Recall below which the curves are ignored.
        min_precision: Precision below which AP is clipped.
        max_boxes_per_sample: Upper bound on predicted boxes per sample.
        mean_ap_weight: Weight of mAP in the NDS.
    """

    class_range: dict[str, float]
    dist_fcn: str
    dist_ths: tuple[float, ...]
    dist_th_tp: float
    min_recall: float
    min_precision: float
    max_boxes_per_sample: int
    mean_ap_weight: int

    def serialize(self) -> dict:
        """The `cfg` entry of `metrics_summary.json`."""
        return {
            "class_range": dict(self.class_range),
            "dist_fcn": self.dist_fcn,
            "dist_ths": list(self.dist_ths),
            "dist_th_tp": self.dist_th_tp,
            "min_recall": self.min_recall,
            "min_precision": self.min_precision,
            "max_boxes_per_sample": self.max_boxes_per_sample,
            "mean_ap_weight": self.mean_ap_weight,
        }


def devkit_config_path(name: str = "detection_cvpr_2019") -> Path:
    """Where the installed devkit keeps the config JSON (found without importing the devkit)."""
    spec = importlib.util.find_spec("nuscenes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nuscenes-devkit is not installed (needed for its detection config)")
    return Path(next(iter(spec.submodule_search_locations))) / "eval" / "detection" / "configs" / f"{name}.json"


def load_config(name: str = "detection_cvpr_2019") -> DetectionConfig:
    """Read a devkit detection config by name."""
    content = json.loads(devkit_config_path(name).read_text())
    if list(content["class_range"]) != list(DETECTION_NAMES):
        raise ValueError(f"{name}: class_range must list the detection classes {DETECTION_NAMES}")
    return DetectionConfig(
        class_range=dict(content["class_range"]),
        dist_fcn=content["dist_fcn"],
        dist_ths=tuple(content["dist_ths"]),
        dist_th_tp=content["dist_th_tp"],
        min_recall=content["min_recall"],
        min_precision=content["min_precision"],
        max_boxes_per_sample=content["max_boxes_per_sample"],
        mean_ap_weight=content["mean_ap_weight"],
    )
