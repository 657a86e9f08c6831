"""Ray casting of the world at one instant, for the spinning LiDAR and the cameras (open3d's Embree scene).

A `Snapshot` is the world frozen at time t: ground plane, buildings and every agent's parts as triangle meshes. The
LiDAR and the cameras cast rays into it; what a ray hits decides the point's intensity or the pixel's colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from fusion.data.synth.agents import Z_BOTTOM, Agent
from fusion.data.synth.catalog import COLOURS, KINDS, MATERIALS, REFLECTIVITY, SHAPES
from fusion.data.synth.city import LOT, MARKING, ROAD, SIDEWALK, CityLayout

RAY_THREADS = 0  # open3d threads per ray query (0: all cores); worker processes set 1 so they do not oversubscribe
SOLID_MARGIN = 0.04  # the solid is this much smaller than its annotated box on every side
GROUND, BUILDINGS, PARTS = 0, 1, 2  # geometry ids, in the order they are added
_UNIT_CORNERS = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=np.float64)
_QUADS = np.array([[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]])
_BOX_TRIANGLES = np.concatenate([_QUADS[:, [0, 1, 2]], _QUADS[:, [0, 2, 3]]])  # (12, 3)
_GROUND_ALBEDO = {ROAD: (0.30, 0.30, 0.32), MARKING: (0.85, 0.85, 0.82), SIDEWALK: (0.58, 0.56, 0.53),
                  LOT: (0.30, 0.42, 0.22)}  # fmt: skip
_GROUND_REFLECTIVITY = {ROAD: 0.03, MARKING: 0.45, SIDEWALK: 0.12, LOT: 0.08}
_FACADES = np.array([(0.62, 0.55, 0.47), (0.70, 0.68, 0.62), (0.50, 0.38, 0.32), (0.45, 0.50, 0.55),
                     (0.78, 0.74, 0.66)])  # fmt: skip
SKY_HORIZON = np.array([0.78, 0.84, 0.90], np.float32)
SKY_ZENITH = np.array([0.36, 0.55, 0.85], np.float32)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners of boxes (x, y, z_centre, w, l, h, yaw) <n, 7>. Returns <float64: n, 8, 3>, x along l."""
    local = (_UNIT_CORNERS - 0.5) * boxes[:, None, [4, 3, 5]]  # (n, 8, 3)
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = c * local[..., 0] - s * local[..., 1] + boxes[:, None, 0]
    y = s * local[..., 0] + c * local[..., 1] + boxes[:, None, 1]
    return np.stack([x, y, local[..., 2] + boxes[:, None, 2]], axis=-1)


def boxes_to_mesh(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangle mesh of boxes <n, 8, 3>: vertices <float32: 8n, 3>, triangles <uint32: 12n, 3> (12 per box)."""
    tris = _BOX_TRIANGLES[None] + 8 * np.arange(len(corners))[:, None, None]
    return corners.reshape(-1, 3).astype(np.float32), tris.reshape(-1, 3).astype(np.uint32)


def annotation_boxes(agents: list[Agent], t: float) -> np.ndarray:
    """Annotated boxes of all agents at time t: <float64: n, 7> (x, y, z_centre, w, l, h, yaw)."""
    if not agents:
        return np.zeros((0, 7))
    xy = np.stack([a.xy_at(t) for a in agents])
    size = np.array([a.size for a in agents])
    z = Z_BOTTOM + size[:, 2] / 2
    return np.column_stack([xy, z, size, [a.yaw for a in agents]])


@dataclass(frozen=True)
class AgentParts:
    """The solids of all agents, in each agent's box frame: fixed for a scene, posed per snapshot."""

    local: np.ndarray  # <float64: P, 6> x0, x1, y0, y1, z0, z1 in metres relative to the box centre bottom
    agent: np.ndarray  # <int64: P> which agent each part belongs to
    albedo: np.ndarray  # <float64: P, 3>
    reflectivity: np.ndarray  # <float64: P>


def agent_parts(agents: list[Agent]) -> AgentParts:
    local, owner, albedo, refl = [], [], [], []
    for i, a in enumerate(agents):
        w, length, h = a.size
        inner = np.array([length, length, w, w, h, h]) - 2 * SOLID_MARGIN
        colour = np.asarray(COLOURS[a.colour])
        for x0, x1, y0, y1, z0, z1, material in SHAPES[KINDS[a.kind].shape]:
            box = np.array([x0, x1, y0, y1, z0, z1]) * inner
            box[4:] += Z_BOTTOM + SOLID_MARGIN
            local.append(box)
            owner.append(i)
            rgb = colour if material == "body" else np.asarray(MATERIALS[material])
            albedo.append(rgb)
            refl.append(0.1 + 0.5 * float(rgb.mean()) if material == "body" else REFLECTIVITY[material])
    if not local:
        return AgentParts(np.zeros((0, 6)), np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0))
    return AgentParts(np.array(local), np.array(owner), np.array(albedo), np.array(refl))


class Snapshot:
    """The world at one instant, ready for ray casting."""

    def __init__(self, city: CityLayout, buildings: np.ndarray, parts: AgentParts, boxes: np.ndarray, keep=None):
        """`boxes` are the annotated agent boxes at this instant (`annotation_boxes`); `keep` masks agents to add."""
        self.city = city
        self.scene = o3d.t.geometry.RaycastingScene(nthreads=1)
        lo, hi = -500.0, city.extent + 500.0
        ground_v = np.array([[lo, lo, 0], [hi, lo, 0], [hi, hi, 0], [lo, hi, 0]], dtype=np.float32)
        ground_t = np.array([[0, 1, 2], [0, 2, 3]], dtype=np.uint32)
        self.scene.add_triangles(o3d.core.Tensor(ground_v), o3d.core.Tensor(ground_t))
        bv, bt = boxes_to_mesh(box_corners(buildings))
        self.scene.add_triangles(o3d.core.Tensor(bv), o3d.core.Tensor(bt))
        self.building_albedo = _FACADES[np.arange(len(buildings)) % len(_FACADES)]
        sel = np.ones(len(parts.agent), bool) if keep is None else keep[parts.agent]
        self.part_agent = parts.agent[sel]
        self.part_albedo = parts.albedo[sel]
        self.part_reflectivity = parts.reflectivity[sel]
        if len(self.part_agent):
            box = boxes[self.part_agent]
            loc = parts.local[sel]
            # Part boxes in the global frame: centre offset rotated by the agent's yaw.
            centre_local = np.column_stack([(loc[:, 0] + loc[:, 1]) / 2, (loc[:, 2] + loc[:, 3]) / 2])
            c, s = np.cos(box[:, 6]), np.sin(box[:, 6])
            cx = box[:, 0] + c * centre_local[:, 0] - s * centre_local[:, 1]
            cy = box[:, 1] + s * centre_local[:, 0] + c * centre_local[:, 1]
            z_bottom = box[:, 2] - box[:, 5] / 2 - Z_BOTTOM  # ground level under the agent
            part_boxes = np.column_stack([cx, cy, z_bottom + (loc[:, 4] + loc[:, 5]) / 2, loc[:, 3] - loc[:, 2],
                                          loc[:, 1] - loc[:, 0], loc[:, 5] - loc[:, 4], box[:, 6]])  # fmt: skip
            pv, pt = boxes_to_mesh(box_corners(part_boxes))
            self.scene.add_triangles(o3d.core.Tensor(pv), o3d.core.Tensor(pt))

    def cast(self, origin: np.ndarray, directions: np.ndarray) -> dict[str, np.ndarray]:
        """First hits of rays from one origin <3> along unit `directions` <n, 3> (global frame).

        Returns t <float32: n> (inf on a miss), geometry <uint32: n> (INVALID_ID on a miss), primitive <uint32: n>,
        normal <float32: n, 3> (facing the ray) and point <float32: n, 3> (the origin on a miss).
        """
        directions = np.asarray(directions, np.float32)
        rays = np.empty((len(directions), 6), np.float32)
        rays[:, :3] = origin
        rays[:, 3:] = directions
        out = self.scene.cast_rays(o3d.core.Tensor(rays), nthreads=RAY_THREADS)
        t = out["t_hit"].numpy()
        normal = out["primitive_normals"].numpy()
        # turned to face the ray: negated where it points along it (zeroed in the measure-zero case of a tie)
        along = np.einsum("ij,ij->i", normal, directions) + 1e-12
        normal[along > 0] *= -1
        normal[along == 0] = 0
        point = directions * np.where(np.isfinite(t), t, 0.0)[:, None]
        point += origin.astype(np.float32)
        return {"t": t, "geometry": out["geometry_ids"].numpy(), "primitive": out["primitive_ids"].numpy(),
                "normal": normal, "point": point}  # fmt: skip

    def hit_agent(self, hit: dict[str, np.ndarray]) -> np.ndarray:
        """Agent index of each hit, -1 where the ray hit no agent. <int64: n>."""
        out = np.full(len(hit["t"]), -1, dtype=np.int64)
        on_part = hit["geometry"] == PARTS
        out[on_part] = self.part_agent[hit["primitive"][on_part] // 12]
        return out

    def _surface(self, hit: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Index of each hit's surface into [4 ground classes, buildings, parts, glass, sky], and the ground mask."""
        g, prim = hit["geometry"], hit["primitive"]
        n_build = len(self.building_albedo)
        surface = np.full(len(g), 4 + n_build + len(self.part_agent) + 1, dtype=np.int64)  # sky
        ground = np.flatnonzero(g == GROUND)
        surface[ground] = self.city.ground_class(hit["point"][:, 0].take(ground), hit["point"][:, 1].take(ground))
        build = np.flatnonzero(g == BUILDINGS)
        surface[build] = 4 + prim[build] // 12
        parts = np.flatnonzero(g == PARTS)
        surface[parts] = 4 + n_build + prim[parts] // 12
        return surface, ground

    def reflectivity(self, hit: dict[str, np.ndarray]) -> np.ndarray:
        """Surface reflectivity in [0, 1] at each hit."""
        table = np.concatenate([[_GROUND_REFLECTIVITY[k] for k in range(4)], np.full(len(self.building_albedo), 0.15),
                                self.part_reflectivity, [0.05, 0.0]])  # fmt: skip
        return table[self._surface(hit)[0]]

    def albedo(self, hit: dict[str, np.ndarray]) -> np.ndarray:
        """Surface colour at each hit, with procedural texture (ground grain, windows). <float32: n, 3>."""
        surface, ground = self._surface(hit)
        glass = 4 + len(self.building_albedo) + len(self.part_agent)
        p = hit["point"]
        build = np.flatnonzero(hit["geometry"] == BUILDINGS)
        pb, nb = p.take(build, axis=0), hit["normal"].take(build, axis=0)
        # windows: on walls above 2 m, a band of each 3.2 m floor and of each 3 m bay along the wall (each modulo
        # taken on the hits that passed the tests before it: np.mod is slow on floats)
        win = np.flatnonzero((np.abs(nb[:, 2]) < 0.5) & (pb[:, 2] > 2))
        floor = np.mod(pb[win, 2], 3.2)
        win = win[(floor > 1.0) & (floor < 2.3)]
        horizontal = np.where(np.abs(nb[win, 0]) > np.abs(nb[win, 1]), pb[win, 1], pb[win, 0])
        bay = np.mod(horizontal, 3.0)
        surface[build[win[(bay > 0.7) & (bay < 2.2)]]] = glass
        table = np.concatenate([[_GROUND_ALBEDO[k] for k in range(4)], self.building_albedo, self.part_albedo,
                                [(0.13, 0.16, 0.22), (0.0, 0.0, 0.0)]]).astype(np.float32)  # fmt: skip
        out = table.take(surface, axis=0)  # `take` rather than fancy indexing: rows of a small table, several x faster
        grain = _hash(np.floor(p[:, 0].take(ground) * 8), np.floor(p[:, 1].take(ground) * 8))
        shaded = out.take(ground, axis=0)
        shaded *= (0.92 + 0.16 * grain)[:, None]
        out[ground] = shaded
        return out


def _hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random values in [0, 1) from integer-valued coordinates."""
    v = np.sin(a * 12.9898 + b * 78.233) * 43758.5453
    return v - np.floor(v)


def lidar_returns(
    snap: Snapshot,
    global_from_lidar: np.ndarray,
    dirs: np.ndarray,
    rings: np.ndarray,
    rng: np.random.Generator,
    min_range: float,
    max_range: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One LiDAR sweep: points <float32: n, 5> (x, y, z, intensity, ring) in the sensor frame, and the agent each
    point lies on (-1 for ground and buildings)."""
    d_global = dirs @ global_from_lidar[:3, :3].T
    hit = snap.cast(global_from_lidar[:3, 3], d_global)
    noise = rng.uniform(-0.01, 0.01, size=len(dirs))
    dropout = rng.random(len(dirs)) < 0.01
    t = hit["t"].astype(np.float64) + noise
    keep = np.isfinite(t) & (t >= min_range) & (t <= max_range) & ~dropout
    cos = np.abs(np.einsum("ij,ij->i", hit["normal"], d_global))
    intensity = np.clip(255.0 * snap.reflectivity(hit) * (0.25 + 0.75 * cos), 0, 255).round()
    points = np.column_stack([dirs[keep] * t[keep, None], intensity[keep], rings[keep]]).astype(np.float32)
    return points, snap.hit_agent(hit)[keep]


@dataclass(frozen=True)
class PixelRays:
    """Unit rays through the pixel centres of one camera, in the camera frame, and the sky seen along each.

    The ego only yaws, so a ray's elevation, and with it the sky colour, is the same at every pose of the drive.
    """

    dirs: np.ndarray  # <float32: H * W, 3>
    sky: np.ndarray  # <float32: H * W, 3>
    height: int
    width: int

    @classmethod
    def for_camera(cls, dirs_cam: np.ndarray, ego_from_cam: np.ndarray) -> PixelRays:
        """`dirs_cam` <H, W, 3> from `rig.camera_directions`."""
        h, w, _ = dirs_cam.shape
        dirs = dirs_cam.reshape(-1, 3).astype(np.float32)
        up = np.clip(dirs @ ego_from_cam[2, :3].astype(np.float32), 0, 1)[:, None]
        sky = SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * np.sqrt(up)
        return cls(dirs, sky.astype(np.float32), h, w)


def render_image(snap: Snapshot, global_from_cam: np.ndarray, rays: PixelRays, sun: np.ndarray) -> np.ndarray:
    """Shade one camera image: <uint8: H, W, 3>."""
    d = rays.dirs @ global_from_cam[:3, :3].T.astype(np.float32)
    hit = snap.cast(global_from_cam[:3, 3], d)
    found = np.isfinite(hit["t"])
    colour = snap.albedo(hit)
    # Direct sunlight where the surface faces the sun and nothing stands between (a shadow ray per hit).
    light = np.clip(hit["normal"] @ sun.astype(np.float32), 0, 1)
    idx = np.flatnonzero(found & (light > 0))
    start, offset = hit["point"].take(idx, axis=0), hit["normal"].take(idx, axis=0)
    offset *= 0.02
    start += offset
    shadow_rays = np.empty((len(idx), 6), np.float32)
    shadow_rays[:, :3] = start
    shadow_rays[:, 3:] = sun
    light[idx[snap.scene.test_occlusions(o3d.core.Tensor(shadow_rays), nthreads=RAY_THREADS).numpy()]] = 0.0
    colour *= (0.42 + 0.58 * light)[:, None]
    # Aerial perspective: distant surfaces fade into the sky colour; misses are sky.
    fog = (1.0 - np.exp(-np.where(found, hit["t"], np.float32(1e9)) / np.float32(350.0)))[:, None]
    colour += fog * (rays.sky - colour)
    return np.clip(colour * 255.0 + 0.5, 0, 255).astype(np.uint8).reshape(rays.height, rays.width, 3)
