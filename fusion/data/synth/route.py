"""The ego vehicle's drive through a city: straight lanes joined by turning arcs at junctions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.data.synth.city import LANE_WIDTH, CityLayout

_STEP = 0.05  # metres between route samples


@dataclass(frozen=True)
class Trajectory:
    """A path sampled every 5 cm, driven at constant speed from t = 0.

    `xy` <float64: n, 2> and `yaw` <float64: n> are indexed by arc length; `pose_at` interpolates them.
    """

    xy: np.ndarray
    yaw: np.ndarray
    speed: float

    def pose_at(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions <float64: ..., 2> and unwrapped yaws <float64: ...> at times `t` (seconds)."""
        s = np.asarray(t, dtype=np.float64) * self.speed / _STEP
        s = np.clip(s, 0, len(self.xy) - 1)
        i0 = np.floor(s).astype(np.int64)
        i1 = np.minimum(i0 + 1, len(self.xy) - 1)
        f = s - i0
        xy = self.xy[i0] * (1 - f)[..., None] + self.xy[i1] * f[..., None]
        yaw = self.yaw[i0] * (1 - f) + self.yaw[i1] * f
        return xy, yaw


def _straight(start: np.ndarray, heading: np.ndarray, length: float) -> np.ndarray:
    s = np.arange(0.0, length, _STEP)
    return start + s[:, None] * heading


def _arc(centre: np.ndarray, radius: float, a0: float, a1: float) -> np.ndarray:
    n = max(int(abs(a1 - a0) * radius / _STEP), 2)
    a = np.linspace(a0, a1, n, endpoint=False)
    return centre + radius * np.stack([np.cos(a), np.sin(a)], axis=-1)


def plan_route(city: CityLayout, rng: np.random.Generator, length: float) -> tuple[np.ndarray, list[str]]:
    """A drive of at least `length` metres in the ego lane, turning at random junctions, away from the map edge.

    Returns points <float64: n, 2> 5 cm apart, and the manoeuvre at each junction ("straight", "left", "right")
    with the distance along the route where it starts, e.g. "left@83".
    """
    centres = city.road_centres
    mid = len(centres) // 2
    axis = int(rng.integers(2))  # 0: drive along x, 1: along y
    heading = np.zeros(2)
    heading[axis] = rng.choice([-1.0, 1.0])
    lane = LANE_WIDTH / 2 if city.right_hand_traffic else -LANE_WIDTH / 2  # offset to the right of the centre line
    right = np.array([heading[1], -heading[0]])
    pos = np.array([centres[mid], centres[mid]]) - heading * rng.uniform(0.3, 0.7) * city.spacing + right * lane
    lo, hi = city.spacing, city.extent - city.spacing
    pieces: list[np.ndarray] = []
    manoeuvres: list[str] = []
    total = 0.0
    while total < length + 20.0:
        axis = int(np.argmax(np.abs(heading)))
        ahead = heading[axis] * (centres - pos[axis])
        dist = float(np.min(ahead[ahead > 1.0]))
        corner = pos + heading * dist  # where the ego lane crosses the next junction's centre line
        straight_end = corner + heading * city.spacing
        choice = str(rng.choice(["straight", "left", "right"], p=[0.6, 0.2, 0.2]))
        if choice == "straight" and not (lo < straight_end[0] < hi and lo < straight_end[1] < hi):
            choice = str(rng.choice(["left", "right"]))
        manoeuvres.append(f"{choice}@{total + dist:.0f}")
        if choice == "straight":
            run = dist + city.spacing / 2
            pieces.append(_straight(pos, heading, run))
            pos = pos + heading * run
            total += run
            continue
        left = np.array([-heading[1], heading[0]])
        new_heading = left if choice == "left" else -left
        new_right = np.array([new_heading[1], -new_heading[0]])
        # X: where the ego lane of the new road crosses the current lane; a circular fillet joins the two.
        x_point = corner + new_right * lane
        inner_turn = (choice == "right") == city.right_hand_traffic
        radius = 5.0 if inner_turn else 9.0
        start = x_point - heading * radius
        end = x_point + new_heading * radius
        arc_centre = start + new_heading * radius
        a0 = float(np.arctan2(*(start - arc_centre)[::-1]))
        a1 = float(np.arctan2(*(end - arc_centre)[::-1]))
        da = (a1 - a0 + np.pi) % (2 * np.pi) - np.pi
        pre = max(float(np.dot(start - pos, heading)), 0.0)
        pieces.append(_straight(pos, heading, pre))
        pieces.append(_arc(arc_centre, radius, a0, a0 + da))
        total += pre + abs(da) * radius
        pos, heading, right = end, new_heading, new_right
    return np.concatenate(pieces, axis=0), manoeuvres


def make_trajectory(xy: np.ndarray, speed: float) -> Trajectory:
    """Attach headings (unwrapped, from the path tangent) to a route."""
    d = np.gradient(xy, axis=0)
    yaw = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
    return Trajectory(xy=xy, yaw=yaw, speed=speed)
