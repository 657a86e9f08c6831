"""The objects of a scene: where they are, how they move, what they look like.

Every agent moves in a straight line at constant speed (zero for parked and standing ones), so the nuScenes devkit's
`box_velocity` (a finite difference of annotated positions) recovers its velocity exactly. Agents are placed around
the ego route in the lanes, parking lanes and sidewalks of the city, and never overlap each other or the ego.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.data.synth.catalog import KINDS
from fusion.data.synth.city import LANE_WIDTH, SIDEWALK_WIDTH, CityLayout
from fusion.data.synth.route import Trajectory

Z_BOTTOM = 0.05  # annotated boxes float 5 cm above the ground, so ground returns never fall inside them
EGO_LENGTH, EGO_WIDTH = 4.1, 1.75  # the ego's footprint, kept clear of every agent with a margin
EGO_CENTRE = 1.3  # the ego frame's origin is the rear axle; the body's centre is this far ahead of it
TIME_STEP = 0.1  # seconds between the collision checks


@dataclass(frozen=True)
class Agent:
    """One object of the scene. `size` is (w, l, h) like nuScenes; the box's x axis runs along l at `yaw`."""

    kind: str
    attribute: str  # nuScenes attribute name, "" for classes without attributes
    colour: str
    size: tuple[float, float, float]
    xy0: tuple[float, float]  # position at t = 0
    yaw: float
    speed: float  # m/s along yaw
    parent: int = -1  # index of the bicycle rack a parked bicycle stands in

    @property
    def category(self) -> str:
        return KINDS[self.kind].category

    def xy_at(self, t: np.ndarray) -> np.ndarray:
        """Positions <float64: ..., 2> at times `t`."""
        t = np.asarray(t, dtype=np.float64)[..., None]
        return np.asarray(self.xy0) + self.speed * t * np.array([np.cos(self.yaw), np.sin(self.yaw)])

    @property
    def velocity(self) -> np.ndarray:
        return self.speed * np.array([np.cos(self.yaw), np.sin(self.yaw)])

    def footprint(self, t: np.ndarray) -> tuple[np.ndarray, float]:
        """Circles covering the footprint at times `t`: centres <float64: T, n, 2> and their radius."""
        w, length = self.size[0], self.size[1]
        n = max(1, int(np.ceil(length / w)))
        offsets = (np.arange(n) + 0.5) * length / n - length / 2
        heading = np.array([np.cos(self.yaw), np.sin(self.yaw)])
        centres = self.xy_at(t)[:, None, :] + offsets[:, None] * heading
        return centres, float(np.hypot(length / (2 * n), w / 2))


class _Placer:
    """Rejection sampler: proposes agents on lanes and sidewalks near the ego route, keeps those that fit."""

    def __init__(self, city: CityLayout, trajectory: Trajectory, duration: float, rng: np.random.Generator):
        self.city, self.rng = city, rng
        self.times = np.arange(0.0, duration + 1e-9, TIME_STEP)
        ego = Agent("car", "", "", (EGO_WIDTH, EGO_LENGTH, 1.6), (0.0, 0.0), 0.0, 0.0)
        _, self.ego_radius = ego.footprint(self.times[:1])
        ego_xy, ego_yaw = trajectory.pose_at(self.times)
        offsets = (np.arange(3) - 1.0) * EGO_LENGTH / 3 + EGO_CENTRE
        heading = np.stack([np.cos(ego_yaw), np.sin(ego_yaw)], axis=-1)
        self.ego_circles = ego_xy[:, None] + offsets[:, None] * heading[:, None]  # (T, 3, 2)
        self.ego_xy, self.ego_yaw = ego_xy, ego_yaw
        self.agents: list[Agent] = []
        self.circles: list[np.ndarray] = []  # (T, n, 2) per agent
        self.radii: list[float] = []  # per circle
        self.owner: list[int] = []  # agent index per circle

    def anchor(self, radius: float = 45.0) -> tuple[bool, float, float, float]:
        """A random road near the ego route: (runs along x?, centre line, along-road coordinate, junction distance).

        Three times in four the point lies ahead of or behind a route point on the ego's own road, where the sensors
        can see it; otherwise anywhere within `radius`, cross streets included.
        """
        i = self.rng.integers(len(self.ego_xy))
        if self.rng.random() < 0.75:
            heading = np.array([np.cos(self.ego_yaw[i]), np.sin(self.ego_yaw[i])])
            normal = np.array([-heading[1], heading[0]])
            xy = self.ego_xy[i] + heading * self.rng.uniform(-radius, radius) + normal * self.rng.uniform(-6, 6)
        else:
            xy = self.ego_xy[i] + self.rng.uniform(-radius, radius, size=2)
        u_y, c_y = self.city.axis_distance(xy[1])
        u_x, c_x = self.city.axis_distance(xy[0])
        along_x = abs(u_y) < abs(u_x)
        along = xy[0] if along_x else xy[1]
        junction = abs(self.city.axis_distance(along)[0])
        return bool(along_x), float(c_y if along_x else c_x), float(along), float(junction)

    def sample_size(self, kind: str) -> tuple[float, float, float]:
        k = KINDS[kind]
        scale = np.clip(1 + k.spread * self.rng.standard_normal(3), 1 - 2.5 * k.spread, 1 + 2.5 * k.spread)
        return tuple(float(s) for s in np.round(np.asarray(k.size) * scale, 3))

    def colour(self, kind: str) -> str:
        names, weights = zip(*KINDS[kind].colours.items(), strict=True)
        w = np.asarray(weights)
        return str(self.rng.choice(names, p=w / w.sum()))

    def fits(self, agent: Agent, exempt: int = -1) -> bool:
        centres, radius = agent.footprint(self.times)  # (T, n, 2)
        gaps = np.linalg.norm(centres[:, :, None] - self.ego_circles[:, None], axis=-1)
        if gaps.min() < radius + self.ego_radius + 0.3:
            return False
        if not self.circles:
            return True
        others = np.concatenate(self.circles, axis=1)  # (T, M, 2)
        gaps = np.linalg.norm(centres[:, :, None] - others[:, None], axis=-1).min(axis=(0, 1))  # (M,)
        clash = gaps < radius + np.asarray(self.radii) + 0.2
        if exempt >= 0:
            clash[np.asarray(self.owner) == exempt] = False
        return not clash.any()

    def add(self, agent: Agent, exempt: int = -1) -> bool:
        if not self.fits(agent, exempt):
            return False
        centres, radius = agent.footprint(self.times)
        self.owner.extend([len(self.agents)] * centres.shape[1])
        self.radii.extend([radius] * centres.shape[1])
        self.circles.append(centres)
        self.agents.append(agent)
        return True

    def at(self, along_x: bool, centre: float, along: float, u: float) -> tuple[float, float]:
        return (along, centre + u) if along_x else (centre + u, along)

    @staticmethod
    def axis_yaw(along_x: bool, direction: float) -> float:
        return float((0.0 if direction > 0 else np.pi) if along_x else (np.pi / 2 if direction > 0 else -np.pi / 2))

    def lane_agent(self, kind: str, u: float, speed: float, attribute: str, min_junction: float) -> bool:
        """An agent in the lane at offset `u`, driving with the traffic of that lane, or parked/stopped there."""
        along_x, centre, along, junction = self.anchor()
        size = self.sample_size(kind)
        if junction < self.city.half_width + min_junction + size[1] / 2:
            return False
        u = u * self.rng.choice([-1.0, 1.0])
        direction = float(self.city.lane_heading(along_x, np.asarray(u)))
        yaw = self.axis_yaw(along_x, direction) + self.rng.normal(0.0, 0.02 if speed == 0 else 0.0)
        u_jitter = self.rng.uniform(-0.25, 0.25)
        xy = self.at(along_x, centre, along, u + u_jitter)
        agent = Agent(kind, attribute, self.colour(kind), size, xy, float(yaw), float(speed))
        return self.add(agent)

    def sidewalk_agent(self, kind: str, speed: float, attribute: str, u_range=(0.5, 3.0), yaw_mode="along") -> bool:
        along_x, centre, along, junction = self.anchor()
        if junction < self.city.half_width + SIDEWALK_WIDTH + 1.0:
            return False
        side = self.rng.choice([-1.0, 1.0])
        u = side * (self.city.half_width + self.rng.uniform(*u_range))
        if yaw_mode == "along":
            yaw = self.axis_yaw(along_x, self.rng.choice([-1.0, 1.0])) + self.rng.normal(0.0, 0.05)
        elif yaw_mode == "across":
            yaw = self.axis_yaw(along_x, 1.0) + np.pi / 2 + self.rng.normal(0.0, 0.1)
        else:
            yaw = self.rng.uniform(-np.pi, np.pi)
        size = self.sample_size(kind)
        if kind == "adult" and attribute == "pedestrian.sitting_lying_down":
            size = (size[0], size[1] * 1.3, round(size[2] * 0.65, 3))
        agent = Agent(kind, attribute, self.colour(kind), size, self.at(along_x, centre, along, u), float(yaw), speed)
        return self.add(agent)


def _repeat(n: int, attempt, tries: int = 25) -> None:
    for _ in range(n):
        for _ in range(tries):
            if attempt():
                break


def populate(
    city: CityLayout, trajectory: Trajectory, duration: float, rng: np.random.Generator, density: float = 1.0
) -> list[Agent]:
    """All agents of one scene, placed around the ego's drive over [0, duration] seconds."""
    p = _Placer(city, trajectory, duration, rng)
    r = p.rng
    hw = city.half_width

    def count(mean: float) -> int:
        return int(r.poisson(mean * density))

    # A construction zone closing a parking lane: cones along the lane line, barriers, a machine and workers.
    if r.random() < 0.7:
        for _ in range(25):
            along_x, centre, along, junction = p.anchor(40.0)
            if junction > hw + 30:
                break
        side = r.choice([-1.0, 1.0])
        direction = r.choice([-1.0, 1.0])
        length = r.uniform(15, 25)
        for s in np.arange(0.0, length, 2.5):
            p.add(Agent("traffic_cone", "", "orange", p.sample_size("traffic_cone"),
                        p.at(along_x, centre, along + direction * s, side * (LANE_WIDTH + 0.4)), 0.0, 0.0))  # fmt: skip
        for s in np.arange(1.5, length - 1.0, 3.2):
            p.add(
                Agent(
                    "barrier",
                    "",
                    p.colour("barrier"),
                    p.sample_size("barrier"),
                    p.at(along_x, centre, along + direction * s, side * 5.6),
                    p.axis_yaw(along_x, 1.0),
                    0.0,
                )
            )
        yaw = p.axis_yaw(along_x, direction)
        p.add(Agent("construction_vehicle", "vehicle.parked", p.colour("construction_vehicle"),
                    p.sample_size("construction_vehicle"),
                    p.at(along_x, centre, along + direction * (length + 5.0), side * 5.25), yaw, 0.0))  # fmt: skip
        for _ in range(2):
            s = r.uniform(0, length)
            p.add(
                Agent(
                    "worker",
                    "pedestrian.standing",
                    p.colour("worker"),
                    p.sample_size("worker"),
                    p.at(along_x, centre, along + direction * s, side * 6.6),
                    r.uniform(-np.pi, np.pi),
                    0.0,
                )
            )

    # Bicycle racks on the sidewalk, with parked bicycles standing in them (the devkit filters those out).
    for _ in range(int(r.random() < 0.5)):
        along_x, centre, along, junction = p.anchor()
        if junction < hw + SIDEWALK_WIDTH + 4:
            continue
        side = r.choice([-1.0, 1.0])
        rack = Agent("bicycle_rack", "", "silver", p.sample_size("bicycle_rack"),
                     p.at(along_x, centre, along, side * (hw + 2.0)), p.axis_yaw(along_x, 1.0), 0.0)  # fmt: skip
        if p.add(rack):
            index = len(p.agents) - 1
            for k in range(int(r.integers(2, 4))):
                xy = p.at(along_x, centre, along - 1.2 + 1.2 * k, side * (hw + 2.0))
                bike = Agent("bicycle", "cycle.without_rider", p.colour("bicycle"), p.sample_size("bicycle"), xy,
                             rack.yaw + np.pi / 2, 0.0, parent=index)  # fmt: skip
                p.add(bike, exempt=index)

    park = 5.25
    drive = LANE_WIDTH / 2
    _repeat(count(20), lambda: p.lane_agent("car", park, 0.0, "vehicle.parked", 3.0))
    _repeat(count(1.5), lambda: p.lane_agent("truck", park, 0.0, "vehicle.parked", 3.0))
    _repeat(count(1.0), lambda: p.lane_agent("trailer", park, 0.0, "vehicle.parked", 3.0))
    _repeat(count(0.3), lambda: p.lane_agent("police_car", park, 0.0, "vehicle.parked", 3.0))
    _repeat(count(0.8), lambda: p.lane_agent("bus", park, 0.0, "vehicle.stopped", 3.0))
    _repeat(count(3.0), lambda: p.lane_agent("car", drive, 0.0, "vehicle.stopped", 2.0))
    _repeat(count(12), lambda: p.lane_agent("car", drive, r.uniform(4.0, 12.0), "vehicle.moving", -20.0))
    _repeat(count(1.5), lambda: p.lane_agent("truck", drive, r.uniform(4.0, 10.0), "vehicle.moving", -20.0))
    _repeat(count(1.0), lambda: p.lane_agent("bus", drive, r.uniform(4.0, 9.0), "vehicle.moving", -20.0))
    _repeat(count(2.0), lambda: p.lane_agent("motorcycle_rider", drive, r.uniform(5.0, 12.0), "cycle.with_rider", -20))
    _repeat(count(3.0), lambda: p.lane_agent("bicycle_rider", park, r.uniform(3.0, 6.0), "cycle.with_rider", -20.0))
    _repeat(count(1.0), lambda: p.lane_agent("debris", park, 0.0, "", 3.0))
    _repeat(count(3.0), lambda: p.sidewalk_agent("bicycle", 0.0, "cycle.without_rider", (0.5, 0.9), "across"))
    _repeat(count(2.0), lambda: p.sidewalk_agent("motorcycle", 0.0, "cycle.without_rider", (0.6, 1.0), "along"))
    _repeat(count(16), lambda: p.sidewalk_agent("adult", r.uniform(0.8, 1.7), "pedestrian.moving"))
    _repeat(count(2.0), lambda: p.sidewalk_agent("child", r.uniform(0.7, 1.3), "pedestrian.moving"))
    _repeat(count(7), lambda: p.sidewalk_agent("adult", 0.0, "pedestrian.standing", yaw_mode="any"))
    _repeat(count(1.5), lambda: p.sidewalk_agent("adult", 0.0, "pedestrian.sitting_lying_down", (2.5, 3.0), "any"))
    _repeat(count(3.0), lambda: p.sidewalk_agent("bin", 0.0, "", (2.6, 3.1), "along"))
    _repeat(count(2.0), lambda: p.sidewalk_agent("traffic_cone", 0.0, "", (0.3, 0.6), "any"))
    _repeat(count(2.0), lambda: p.sidewalk_agent("barrier", 0.0, "", (0.4, 0.6), "along"))

    # Pedestrians on zebra crossings, walking across the road.
    def crossing() -> bool:
        along_x, centre, along, _ = p.anchor()
        junction_along = along - city.axis_distance(along)[0]
        offset = r.choice([-1.0, 1.0]) * (hw + 2.0)
        start = r.choice([-1.0, 1.0]) * (hw + 0.8)
        xy = p.at(along_x, centre, junction_along + offset, start)
        yaw = p.axis_yaw(not along_x, -np.sign(start))
        return p.add(Agent("adult", "pedestrian.moving", p.colour("adult"), p.sample_size("adult"), xy, yaw,
                           float(r.uniform(1.0, 1.6))))  # fmt: skip

    _repeat(count(3.0), crossing, tries=10)
    return p.agents
