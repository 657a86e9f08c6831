"""What the synthetic world is made of: nuScenes categories, attributes, object sizes, shapes and colours.

Category and attribute names are the real nuScenes v1.0 vocabulary, so `category_to_detection_name` and every tool
written for nuScenes apply unchanged. Mean sizes (w, l, h) follow the nuScenes training-set statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES: dict[str, str] = {
    "human.pedestrian.adult": "Adult subcategory.",
    "human.pedestrian.child": "Child subcategory.",
    "human.pedestrian.wheelchair": "Wheelchairs. If a person is in the wheelchair, include in the annotation.",
    "human.pedestrian.stroller": "Strollers. If a person is in the stroller, include in the annotation.",
    "human.pedestrian.personal_mobility": "A small electric or self-propelled vehicle, e.g. skateboard, segway.",
    "human.pedestrian.police_officer": "Police officer.",
    "human.pedestrian.construction_worker": "Construction worker.",
    "animal": "All animals, e.g. cats, rats, dogs, deer, birds.",
    "vehicle.car": "Vehicle designed primarily for personal use, e.g. sedans, hatch-backs, wagons, vans, SUVs.",
    "vehicle.motorcycle": "Gasoline or electric powered 2-wheeled vehicle designed to move rapidly on the road "
    "surface.",
    "vehicle.bicycle": "Human or electric powered 2-wheeled vehicle designed to travel at lower speeds.",
    "vehicle.bus.bendy": "Bendy bus subcategory. Annotate each section of the bendy bus individually.",
    "vehicle.bus.rigid": "Rigid bus subcategory.",
    "vehicle.truck": "Vehicles primarily designed to haul cargo including pick-ups, lorries, trucks and semi-tractors.",
    "vehicle.construction": "Vehicles primarily designed for construction. Typically very slow moving or stationary.",
    "vehicle.emergency.ambulance": "All types of ambulances.",
    "vehicle.emergency.police": "All types of police vehicles including police bicycles and motorcycles.",
    "vehicle.trailer": "Any vehicle trailer, both for trucks, cars and bikes.",
    "movable_object.barrier": "Temporary road barrier placed in the scene in order to redirect traffic.",
    "movable_object.trafficcone": "All types of traffic cone.",
    "movable_object.pushable_pullable": "Objects that a pedestrian may push or pull, e.g. dolleys, wheel barrows, "
    "bins.",
    "movable_object.debris": "Movable debris or trash that is too large to be driven over safely.",
    "static_object.bicycle_rack": "Area or device intended to park or secure the bicycles in a row.",
}

ATTRIBUTES: dict[str, str] = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move.",
    "vehicle.parked": "Vehicle is stationary (usually for longer duration) with no immediate intent to move.",
    "cycle.with_rider": "There is a rider on the bicycle or motorcycle.",
    "cycle.without_rider": "There is NO rider on the bicycle or motorcycle.",
    "pedestrian.sitting_lying_down": "The human is sitting or lying down.",
    "pedestrian.standing": "The human is standing.",
    "pedestrian.moving": "The human is moving.",
}

VISIBILITY = [
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
]

# Colour names questions can ask about, with the sRGB albedo the renderer uses.
COLOURS: dict[str, tuple[float, float, float]] = {
    "white": (0.90, 0.90, 0.88),
    "black": (0.07, 0.07, 0.08),
    "silver": (0.66, 0.68, 0.70),
    "gray": (0.40, 0.41, 0.43),
    "red": (0.72, 0.08, 0.08),
    "blue": (0.10, 0.22, 0.68),
    "green": (0.12, 0.48, 0.18),
    "yellow": (0.93, 0.78, 0.08),
    "orange": (0.95, 0.45, 0.05),
    "brown": (0.42, 0.27, 0.13),
}

VEHICLE_COLOURS = {"white": 0.25, "black": 0.18, "silver": 0.16, "gray": 0.14, "red": 0.09, "blue": 0.09,
                   "green": 0.03, "yellow": 0.02, "orange": 0.01, "brown": 0.03}  # fmt: skip
CLOTHING_COLOURS = {"black": 0.25, "white": 0.12, "gray": 0.15, "blue": 0.18, "red": 0.1, "green": 0.07,
                    "yellow": 0.05, "brown": 0.08}  # fmt: skip

# Parts of each shape in the unit box (x along length in [-0.5, 0.5], y along width in [-0.5, 0.5], z in [0, 1])
# with a material: "body" takes the object's colour; the others are fixed.
Part = tuple[float, float, float, float, float, float, str]
_WHEELS = [(x0, x1, y0, y1, 0.0, 0.3, "tyre") for x0, x1 in ((-0.42, -0.22), (0.22, 0.42))
           for y0, y1 in ((-0.5, -0.38), (0.38, 0.5))]  # fmt: skip
SHAPES: dict[str, list[Part]] = {
    "car": [(-0.5, 0.5, -0.5, 0.5, 0.22, 0.58, "body"), (-0.28, 0.2, -0.46, 0.46, 0.58, 1.0, "glass"), *_WHEELS],
    "truck": [(0.26, 0.5, -0.5, 0.5, 0.12, 0.72, "body"), (0.26, 0.46, -0.47, 0.47, 0.72, 0.9, "glass"),
              (-0.5, 0.24, -0.5, 0.5, 0.12, 1.0, "cargo"), *_WHEELS],
    "bus": [(-0.5, 0.5, -0.5, 0.5, 0.08, 0.5, "body"), (-0.5, 0.5, -0.5, 0.5, 0.5, 0.82, "glass"),
            (-0.5, 0.5, -0.5, 0.5, 0.82, 1.0, "body")],
    "trailer": [(-0.5, 0.5, -0.5, 0.5, 0.3, 1.0, "body"), (-0.45, -0.2, -0.5, 0.5, 0.0, 0.3, "tyre")],
    "construction": [(-0.5, 0.25, -0.5, 0.5, 0.12, 0.6, "body"), (-0.2, 0.2, -0.44, 0.44, 0.6, 1.0, "glass"),
                     (0.3, 0.5, -0.35, 0.35, 0.0, 0.4, "tyre"), *_WHEELS[:2]],
    "pedestrian": [(-0.25, 0.25, -0.35, 0.35, 0.0, 0.47, "trousers"), (-0.5, 0.5, -0.5, 0.5, 0.47, 0.85, "body"),
                   (-0.3, 0.3, -0.28, 0.28, 0.86, 1.0, "skin")],
    "cycle": [(-0.5, 0.5, -0.15, 0.15, 0.0, 0.6, "body"), (0.3, 0.45, -0.5, 0.5, 0.6, 0.7, "metal")],
    "cycle_rider": [(-0.5, 0.5, -0.12, 0.12, 0.0, 0.35, "body"), (-0.2, 0.15, -0.5, 0.5, 0.35, 0.82, "clothes"),
                    (-0.12, 0.1, -0.28, 0.28, 0.85, 1.0, "skin")],
    "cone": [(-0.5, 0.5, -0.5, 0.5, 0.0, 0.08, "body"), (-0.34, 0.34, -0.34, 0.34, 0.08, 0.5, "body"),
             (-0.26, 0.26, -0.26, 0.26, 0.5, 0.66, "white"), (-0.18, 0.18, -0.18, 0.18, 0.66, 1.0, "body")],
    "block": [(-0.5, 0.5, -0.5, 0.5, 0.0, 1.0, "body")],
    "rack": [(-0.5, 0.5, -0.06, 0.06, 0.55, 0.7, "metal"), (-0.5, -0.45, -0.06, 0.06, 0.0, 0.55, "metal"),
             (0.45, 0.5, -0.06, 0.06, 0.0, 0.55, "metal")],
}  # fmt: skip

MATERIALS: dict[str, tuple[float, float, float]] = {
    "glass": (0.10, 0.13, 0.17),
    "tyre": (0.05, 0.05, 0.05),
    "metal": (0.55, 0.57, 0.6),
    "skin": (0.80, 0.62, 0.50),
    "trousers": (0.15, 0.17, 0.25),
    "white": (0.92, 0.92, 0.92),
    "cargo": (0.82, 0.82, 0.80),
    "clothes": (0.12, 0.14, 0.3),
}
# LiDAR reflectivity (0-1) per material; "body" uses the colour's brightness.
REFLECTIVITY = {
    "glass": 0.05,
    "tyre": 0.04,
    "metal": 0.6,
    "skin": 0.3,
    "trousers": 0.2,
    "white": 0.8,
    "cargo": 0.5,
    "clothes": 0.2,
}


@dataclass(frozen=True)
class Kind:
    """One kind of object: category, mean size (w, l, h) and relative spread, shape, colours."""

    category: str
    size: tuple[float, float, float]
    spread: float
    shape: str
    colours: dict[str, float]


KINDS: dict[str, Kind] = {
    "car": Kind("vehicle.car", (1.95, 4.62, 1.73), 0.08, "car", VEHICLE_COLOURS),
    "police_car": Kind("vehicle.emergency.police", (2.0, 4.9, 1.8), 0.04, "car", {"white": 0.5, "black": 0.5}),
    "truck": Kind("vehicle.truck", (2.51, 6.93, 2.84), 0.12, "truck", VEHICLE_COLOURS),
    "bus": Kind("vehicle.bus.rigid", (2.94, 11.19, 3.47), 0.05, "bus",
                {"yellow": 0.3, "white": 0.3, "red": 0.2, "blue": 0.2}),
    "trailer": Kind("vehicle.trailer", (2.90, 12.29, 3.87), 0.06, "trailer", {"white": 0.5, "gray": 0.3, "blue": 0.2}),
    "construction_vehicle": Kind("vehicle.construction", (2.73, 6.37, 3.19), 0.1, "construction",
                                 {"yellow": 0.6, "orange": 0.4}),
    "adult": Kind("human.pedestrian.adult", (0.67, 0.73, 1.77), 0.07, "pedestrian", CLOTHING_COLOURS),
    "child": Kind("human.pedestrian.child", (0.5, 0.5, 1.25), 0.08, "pedestrian", CLOTHING_COLOURS),
    "worker": Kind("human.pedestrian.construction_worker", (0.7, 0.75, 1.8), 0.05, "pedestrian",
                   {"orange": 0.6, "yellow": 0.4}),
    "bicycle": Kind("vehicle.bicycle", (0.60, 1.70, 1.10), 0.06, "cycle", {"black": 0.3, "red": 0.2, "blue": 0.2,
                                                                            "silver": 0.2, "green": 0.1}),
    "bicycle_rider": Kind("vehicle.bicycle", (0.75, 1.75, 1.72), 0.05, "cycle_rider", {"black": 0.3, "red": 0.2,
                                                                                      "blue": 0.3, "silver": 0.2}),
    "motorcycle": Kind("vehicle.motorcycle", (0.77, 2.11, 1.2), 0.06, "cycle", {"black": 0.4, "red": 0.3,
                                                                                "blue": 0.2, "white": 0.1}),
    "motorcycle_rider": Kind("vehicle.motorcycle", (0.85, 2.15, 1.6), 0.05, "cycle_rider", {"black": 0.4, "red": 0.3,
                                                                                            "blue": 0.3}),
    "traffic_cone": Kind("movable_object.trafficcone", (0.41, 0.41, 1.07), 0.05, "cone", {"orange": 1.0}),
    "barrier": Kind("movable_object.barrier", (0.48, 2.49, 0.99), 0.05, "block",
                    {"white": 0.3, "orange": 0.3, "red": 0.2, "yellow": 0.2}),
    "bin": Kind("movable_object.pushable_pullable", (0.7, 0.8, 1.1), 0.1, "block", {"green": 0.4, "gray": 0.6}),
    "debris": Kind("movable_object.debris", (0.8, 1.2, 0.5), 0.2, "block", {"brown": 0.7, "gray": 0.3}),
    "bicycle_rack": Kind("static_object.bicycle_rack", (2.0, 4.2, 1.0), 0.0, "rack", {"silver": 1.0}),
}  # fmt: skip
