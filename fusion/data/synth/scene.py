"""Generate one scene: drive the ego, spin the LiDAR, expose the cameras, annotate every keyframe.

Runs in a worker process and writes its sensor files straight into the output folder; returns the table records.
Every random draw comes from a generator seeded by (seed, scene index), so a scene's bytes do not depend on which
worker made it or in what order.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.spatial import cKDTree

from fusion.data.synth import render
from fusion.data.synth.agents import Agent, populate
from fusion.data.synth.city import CityLayout
from fusion.data.synth.geometry import make_pose, matrix_to_quaternion, rotation_zyx, yaw_quaternion
from fusion.data.synth.presets import Preset
from fusion.data.synth.render import (
    PARTS,
    AgentParts,
    PixelRays,
    Snapshot,
    agent_parts,
    annotation_boxes,
    lidar_returns,
    render_image,
)
from fusion.data.synth.rig import (
    LIDAR_CHANNEL,
    LIDAR_MAX_RANGE,
    LIDAR_MIN_RANGE,
    Rig,
    camera_directions,
    lidar_directions,
    make_rig,
)
from fusion.data.synth.route import Trajectory, make_trajectory, plan_route

KEYFRAME_PERIOD_US = 500_000  # 2 Hz keyframes
ANNOTATION_RANGE = 70.0  # metres from the ego within which objects are annotated
VISIBILITY_STRIDE = 4  # pixel stride of the rays that measure how much of each object the cameras see


def token(seed: int, *parts: object) -> str:
    """A nuScenes-style 32-hex token, a pure function of the seed and what the record is."""
    return hashlib.md5("/".join(map(str, (seed, *parts))).encode()).hexdigest()


@dataclass(frozen=True)
class SceneJob:
    index: int
    name: str
    location: str
    seed: int
    preset: Preset
    root: str  # output folder (the temporary one while generating)
    start_us: int  # timestamp of the first keyframe
    logfile: str
    buildings_seed: int | None = None  # the buildings' seed, when not `seed` (a world of new scenes in an old city)


def count_points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """How many points lie inside each box, boundaries included, as the devkit's `points_in_box` counts them.

    points <n, 3> and boxes <b, 7> (x, y, z, w, l, h, yaw) in one frame. Only the points within each box's
    circumscribed sphere (a KD-tree query) are tested. Returns <int64: b>.
    """
    if len(boxes) == 0 or len(points) == 0:
        return np.zeros(len(boxes), np.int64)
    radius = 0.5 * np.linalg.norm(boxes[:, 3:6], axis=1) + 1e-6
    candidates = cKDTree(points).query_ball_point(boxes[:, :3], radius)
    lengths = np.array([len(c) for c in candidates])
    box = np.repeat(np.arange(len(boxes)), lengths)
    if len(box) == 0:
        return np.zeros(len(boxes), np.int64)
    d = points[np.concatenate(candidates).astype(np.int64)] - boxes[box, :3]
    c, s = np.cos(boxes[box, 6]), np.sin(boxes[box, 6])
    inside = (
        (np.abs(c * d[:, 0] + s * d[:, 1]) <= boxes[box, 4] / 2)
        & (np.abs(-s * d[:, 0] + c * d[:, 1]) <= boxes[box, 3] / 2)
        & (np.abs(d[:, 2]) <= boxes[box, 5] / 2)
    )
    return np.bincount(box[inside], minlength=len(boxes))


def _visibility_level(fraction: np.ndarray) -> np.ndarray:
    """nuScenes visibility token ("1".."4") from the visible fraction of each object."""
    return np.digitize(fraction, [0.4, 0.6, 0.8]) + 1


def _visible_fraction(snap: Snapshot, poses: list[np.ndarray], rays: list[np.ndarray], n_agents: int) -> np.ndarray:
    """Fraction of each agent's unoccluded image area, over all cameras, that is not hidden by anything else."""
    import open3d as o3d

    seen = np.zeros(n_agents)
    whole = np.zeros(n_agents)
    for pose, r in zip(poses, rays, strict=True):
        d = (r @ pose[:3, :3].T).astype(np.float32)
        all_rays = np.empty((len(d), 6), np.float32)
        all_rays[:, :3] = pose[:3, 3]
        all_rays[:, 3:] = d
        hits = snap.scene.list_intersections(o3d.core.Tensor(all_rays), nthreads=render.RAY_THREADS)
        splits = hits["ray_splits"].numpy().astype(np.int64)
        counts = np.diff(splits)
        ray = np.repeat(np.arange(len(d)), counts)  # the hits come grouped by ray, in ray order
        t = hits["t_hit"].numpy()
        geometry = hits["geometry_ids"].numpy()
        agent = np.full(len(t), -1, np.int64)
        on_part = geometry == PARTS
        agent[on_part] = snap.part_agent[hits["primitive_ids"].numpy()[on_part].astype(np.int64) // 12]
        # each ray's nearest hit, the first of equal ones (what a stable sort by (ray, t) puts first), without a sort
        hit_rays = np.flatnonzero(counts)
        nearest = np.minimum.reduceat(t, splits[:-1][hit_rays])
        at_nearest = np.flatnonzero(t == np.repeat(nearest, counts[hit_rays]))
        front = agent[at_nearest[np.diff(ray[at_nearest], prepend=-1) != 0]]
        seen += np.bincount(front[front >= 0], minlength=n_agents)
        pairs = np.unique(ray[agent >= 0] * n_agents + agent[agent >= 0])
        whole += np.bincount(pairs % n_agents, minlength=n_agents)
    return np.where(whole > 0, seen / np.maximum(whole, 1), 0.0)


@dataclass
class World:
    """Everything about one scene's world that the sensors observe; rebuilt identically from its `SceneJob`."""

    city: CityLayout
    buildings: np.ndarray  # <float64: n, 7>
    duration: float  # seconds from the first keyframe to the last
    speed: float
    manoeuvres: list[str]
    trajectory: Trajectory
    agents: list[Agent]
    parts: AgentParts
    rig: Rig
    sun: np.ndarray  # <float32: 3> unit vector towards the sun
    rng: np.random.Generator  # continues where the world's draws stopped (sensor noise)

    def snapshot(self, t: float, centre: np.ndarray) -> tuple[Snapshot, np.ndarray]:
        """The world at `t` seconds into the scene, with the agents near `centre`, and all agents' boxes."""
        boxes = annotation_boxes(self.agents, t)
        near = np.linalg.norm(boxes[:, :2] - centre[:2], axis=1) < LIDAR_MAX_RANGE + 15.0 if len(boxes) else None
        return Snapshot(self.city, self.buildings, self.parts, boxes, near), boxes

    def global_from_ego(self, t: float) -> np.ndarray:
        xy, yaw = self.trajectory.pose_at(np.float64(t))
        return make_pose(rotation_zyx(float(yaw)), [xy[0], xy[1], 0.0])


def build_world(job: SceneJob) -> World:
    p, seed = job.preset, job.seed
    rng = np.random.default_rng([seed, job.index])
    city = CityLayout(right_hand_traffic=job.location == "boston-seaport")
    city_seed = seed if job.buildings_seed is None else job.buildings_seed
    buildings = city.buildings(np.random.default_rng([city_seed, 10_000 + _location_index(job.location)]))
    duration = (p.samples_per_scene - 1) * KEYFRAME_PERIOD_US / 1e6
    speed = 0.0 if rng.random() < 0.12 else float(rng.uniform(4.0, 11.0))
    route, manoeuvres = plan_route(city, rng, speed * duration + 30.0)
    trajectory = make_trajectory(route, speed)
    agents = populate(city, trajectory, duration, rng, p.density)
    rig = make_rig(rng, p.image_scale)
    sun_az, sun_el = rng.uniform(-np.pi, np.pi), rng.uniform(np.deg2rad(30), np.deg2rad(65))
    sun = np.array([np.cos(sun_el) * np.cos(sun_az), np.cos(sun_el) * np.sin(sun_az), np.sin(sun_el)], np.float32)
    return World(city, buildings, duration, speed, manoeuvres, trajectory, agents, agent_parts(agents), rig, sun, rng)


def generate_scene(job: SceneJob) -> dict[str, list]:
    """Write one scene's sensor files under `job.root`; return its table records and world metadata."""
    p, seed = job.preset, job.seed
    w = build_world(job)
    city, agents, rig, sun, rng, speed, manoeuvres = w.city, w.agents, w.rig, w.sun, w.rng, w.speed, w.manoeuvres
    lidar_dirs, rings = lidar_directions(p.lidar_azimuth_steps)
    pixel_rays = [PixelRays.for_camera(camera_directions(c), c.ego_from_cam) for c in rig.cameras]
    vis_rays = [camera_directions(c, VISIBILITY_STRIDE).reshape(-1, 3) for c in rig.cameras]

    log_token = token(seed, "log", job.name)
    tables: dict[str, list] = {k: [] for k in ("ego_pose", "sample", "sample_data", "sample_annotation", "instance",
                                               "calibrated_sensor")}  # fmt: skip
    sensors = [(LIDAR_CHANNEL, rig.ego_from_lidar, [])] + [
        (c.channel, c.ego_from_cam, c.intrinsic.tolist()) for c in rig.cameras
    ]
    calib = {}
    for channel, pose, intrinsic in sensors:
        calib[channel] = token(seed, "calibrated_sensor", job.name, channel)
        tables["calibrated_sensor"].append({
            "token": calib[channel], "sensor_token": token(seed, "sensor", channel),
            "translation": pose[:3, 3].tolist(), "rotation": matrix_to_quaternion(pose[:3, :3]).tolist(),
            "camera_intrinsic": intrinsic,
        })  # fmt: skip

    def ego_pose_at(t_us: int) -> tuple[str, np.ndarray]:
        xy, yaw = w.trajectory.pose_at(np.float64((t_us - job.start_us) / 1e6))
        tok = token(seed, "ego_pose", job.name, t_us)
        tables["ego_pose"].append({"token": tok, "timestamp": t_us, "rotation": yaw_quaternion(float(yaw)).tolist(),
                                   "translation": [float(xy[0]), float(xy[1]), 0.0]})  # fmt: skip
        return tok, make_pose(rotation_zyx(float(yaw)), [xy[0], xy[1], 0.0])

    def snapshot(t_us: int, centre: np.ndarray) -> tuple[Snapshot, np.ndarray]:
        return w.snapshot((t_us - job.start_us) / 1e6, centre)

    n = p.samples_per_scene
    sample_tokens = [token(seed, "sample", job.name, k) for k in range(n)]
    period = KEYFRAME_PERIOD_US // p.sweeps_per_sample
    chains: dict[str, list[dict]] = {LIDAR_CHANNEL: []}
    annotations: list[tuple[int, int, dict]] = []  # (agent, keyframe, record)
    for j in range((n - 1) * p.sweeps_per_sample + 1):
        t_us = job.start_us + j * period
        key = j % p.sweeps_per_sample == 0
        k = -(-j // p.sweeps_per_sample)  # the keyframe this sweep belongs to (the next one)
        ego_tok, global_from_ego = ego_pose_at(t_us)
        global_from_lidar = global_from_ego @ rig.ego_from_lidar
        snap, boxes = snapshot(t_us, global_from_ego[:3, 3])
        points, _ = lidar_returns(snap, global_from_lidar, lidar_dirs, rings, rng, LIDAR_MIN_RANGE, LIDAR_MAX_RANGE)
        folder = "samples" if key else "sweeps"
        filename = f"{folder}/{LIDAR_CHANNEL}/{job.logfile}__{LIDAR_CHANNEL}__{t_us}.pcd.bin"
        points.tofile(os.path.join(job.root, filename))
        chains[LIDAR_CHANNEL].append({
            "token": token(seed, "sample_data", job.name, LIDAR_CHANNEL, t_us), "sample_token": sample_tokens[k],
            "ego_pose_token": ego_tok, "calibrated_sensor_token": calib[LIDAR_CHANNEL], "timestamp": t_us,
            "fileformat": "pcd", "is_key_frame": key, "height": 0, "width": 0, "filename": filename,
        })  # fmt: skip
        if not key:
            continue
        # Keyframe: annotate, then expose each camera at its own trigger time (and ego pose).
        tables["sample"].append({"token": sample_tokens[k], "timestamp": t_us, "scene_token": token(seed, "scene",
                                 job.name)})  # fmt: skip
        ego_xy = global_from_ego[:2, 3]
        in_range = np.flatnonzero(np.linalg.norm(boxes[:, :2] - ego_xy, axis=1) <= ANNOTATION_RANGE)
        points_global = points[:, :3].astype(np.float64) @ global_from_lidar[:3, :3].T + global_from_lidar[:3, 3]
        counts = count_points_in_boxes(points_global, boxes[in_range])
        cam_poses = [global_from_ego @ c.ego_from_cam for c in rig.cameras]
        visible = _visible_fraction(snap, cam_poses, vis_rays, len(agents))
        levels = _visibility_level(visible)
        for a, count in zip(in_range, counts, strict=True):
            b = boxes[a]
            annotations.append((int(a), k, {
                "sample_token": sample_tokens[k], "visibility_token": str(levels[a]),
                "attribute_tokens": [token(seed, "attribute", agents[a].attribute)] if agents[a].attribute else [],
                "translation": b[:3].tolist(), "size": b[3:6].tolist(),
                "rotation": yaw_quaternion(float(b[6])).tolist(), "num_lidar_pts": int(count), "num_radar_pts": 0,
            }))  # fmt: skip
        for cam, r in zip(rig.cameras, pixel_rays, strict=True):
            t_cam = t_us + round(cam.time_offset * 1e6)
            cam_ego_tok, cam_global_from_ego = ego_pose_at(t_cam)
            cam_snap, _ = snapshot(t_cam, cam_global_from_ego[:3, 3])
            image = render_image(cam_snap, cam_global_from_ego @ cam.ego_from_cam, r, sun)
            filename = f"samples/{cam.channel}/{job.logfile}__{cam.channel}__{t_cam}.jpg"
            Image.fromarray(image).save(os.path.join(job.root, filename), quality=90)
            chains.setdefault(cam.channel, []).append({
                "token": token(seed, "sample_data", job.name, cam.channel, t_cam), "sample_token": sample_tokens[k],
                "ego_pose_token": cam_ego_tok, "calibrated_sensor_token": calib[cam.channel], "timestamp": t_cam,
                "fileformat": "jpg", "is_key_frame": True, "height": cam.height, "width": cam.width,
                "filename": filename,
            })  # fmt: skip

    _link(tables["sample"])
    for chain in chains.values():
        _link(chain)
        tables["sample_data"].extend(chain)
    instances = _instances(seed, job.name, agents, annotations, tables)
    scene_token = token(seed, "scene", job.name)
    description = _describe(speed, manoeuvres, agents, w.duration)
    tables["scene"] = [{
        "token": scene_token, "log_token": log_token, "nbr_samples": n, "first_sample_token": sample_tokens[0],
        "last_sample_token": sample_tokens[-1], "name": job.name, "description": description,
    }]  # fmt: skip
    tables["log"] = [{"token": log_token, "logfile": job.logfile, "vehicle": job.logfile.split("-")[0],
                      "date_captured": job.logfile[5:15], "location": job.location}]  # fmt: skip
    world = {
        "scene": {"token": scene_token, "name": job.name, "ego_speed": speed, "manoeuvres": manoeuvres,
                  "sun_direction": sun.tolist(), "right_hand_traffic": city.right_hand_traffic},
        "instances": instances,
    }  # fmt: skip
    return {"tables": tables, "world": world}


def _location_index(location: str) -> int:
    from fusion.data.synth.presets import LOCATIONS

    return LOCATIONS.index(location)


def _link(records: list[dict]) -> None:
    """Fill prev/next of records already in time order."""
    for i, r in enumerate(records):
        r["prev"] = records[i - 1]["token"] if i > 0 else ""
        r["next"] = records[i + 1]["token"] if i + 1 < len(records) else ""


def _instances(seed: int, scene: str, agents: list[Agent], annotations, tables) -> dict[str, dict]:
    """Instance and sample_annotation records (tracks across keyframes), and each instance's world properties."""
    by_agent: dict[int, list[tuple[int, dict]]] = {}
    for a, k, rec in annotations:
        by_agent.setdefault(a, []).append((k, rec))
    world = {}
    for a in sorted(by_agent):
        agent = agents[a]
        inst = token(seed, "instance", scene, a)
        track = [rec for _, rec in sorted(by_agent[a], key=lambda kr: kr[0])]
        for k_rec in track:
            k_rec["token"] = token(seed, "sample_annotation", scene, a, k_rec["sample_token"])
            k_rec["instance_token"] = inst
        _link(track)
        tables["sample_annotation"].extend(track)
        tables["instance"].append({
            "token": inst, "category_token": token(seed, "category", agent.category), "nbr_annotations": len(track),
            "first_annotation_token": track[0]["token"], "last_annotation_token": track[-1]["token"],
        })  # fmt: skip
        world[inst] = {"kind": agent.kind, "category": agent.category, "colour": agent.colour,
                       "attribute": agent.attribute, "speed": agent.speed, "velocity": agent.velocity.tolist(),
                       "in_bicycle_rack": agent.parent >= 0}  # fmt: skip
    return world


def _describe(speed: float, manoeuvres: list[str], agents: list[Agent], duration: float) -> str:
    """A nuScenes-style scene description from what the scene contains."""
    bits = []
    if speed == 0:
        bits.append("Ego waits")
    else:
        turns = [m.split("@")[0] for m in manoeuvres if float(m.split("@")[1]) < speed * duration]
        bits.append("Ego " + ", ".join(f"turns {t}" if t != "straight" else "crosses intersection" for t in turns)
                    if turns else "Ego drives straight")  # fmt: skip
    kinds = {a.kind for a in agents}
    if "construction_vehicle" in kinds or "barrier" in kinds:
        bits.append("construction")
    if "bus" in kinds:
        bits.append("bus")
    if any(a.kind in ("truck", "trailer") and a.speed == 0 for a in agents):
        bits.append("parked trucks")
    if any(a.kind == "adult" and a.speed > 0 for a in agents):
        bits.append("peds on sidewalk")
    if any(a.kind.endswith("_rider") for a in agents):
        bits.append("cyclists")
    return ", ".join(bits)
