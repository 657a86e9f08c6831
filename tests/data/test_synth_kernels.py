"""The synthetic world's vectorised kernels against per-point and per-ray loops: the ground classes the cameras and
the LiDAR shade by, and how much of each object the cameras see (the annotations' visibility)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusion.data.synth import render
from fusion.data.synth.city import LANE_WIDTH, LOT, MARKING, ROAD, SIDEWALK, SIDEWALK_WIDTH, CityLayout
from fusion.data.synth.generate import scene_jobs
from fusion.data.synth.presets import get_preset
from fusion.data.synth.render import PARTS
from fusion.data.synth.rig import camera_directions
from fusion.data.synth.scene import _visible_fraction, build_world


def _ground_class_at(city: CityLayout, x: float, y: float) -> int:
    """One point's ground class, rule by rule, as CityLayout's docstring and the map describe the roads."""
    dy = min(abs(y - c) for c in city.road_centres)  # across the nearest x-road
    dx = min(abs(x - c) for c in city.road_centres)
    hw = city.half_width
    on_x, on_y = dy < hw, dx < hw
    if not (on_x or on_y):
        return SIDEWALK if (dy < hw + SIDEWALK_WIDTH or dx < hw + SIDEWALK_WIDTH) else LOT
    if on_x and on_y:  # a junction: plain road
        return ROAD
    # on one road only: `across` the offset from its centre line, `to_junction` the distance across the crossing
    # road's centre line, `along` the coordinate along the road, `across_coord` the one across it
    across, to_junction, along, across_coord = (dy, dx, x, y) if on_x else (dx, dy, y, x)
    lines = to_junction >= hw + 4.0  # centre line and dashed dividers away from the junction
    if lines and (across < 0.08 or (abs(across - LANE_WIDTH) < 0.07 and along % 6.0 < 3.0)):
        return MARKING
    if hw + 0.5 < to_junction < hw + 3.5 and across_coord % 1.0 < 0.5:  # the zebra crossing before the junction
        return MARKING
    return ROAD


def test_ground_class_matches_a_per_point_rule():
    city = CityLayout()
    rng = np.random.default_rng(0)
    n = 4000
    x, y = rng.uniform(0, city.extent, n), rng.uniform(0, city.extent, n)
    # a third of the points on the lines, where the classes change within centimetres
    k = n // 3
    offsets = rng.choice([0.0, 0.05, LANE_WIDTH, -LANE_WIDTH, LANE_WIDTH + 0.06, city.half_width + 1.0], k)
    y[:k] = city.road_centres[rng.integers(0, city.n_roads, k)] + offsets
    x[k : 2 * k] = city.road_centres[rng.integers(0, city.n_roads, k)] + offsets
    got = city.ground_class(x, y)
    want = np.array([_ground_class_at(city, float(a), float(b)) for a, b in zip(x, y, strict=True)])
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got)) == {ROAD, MARKING, SIDEWALK, LOT}
    assert city.ground_class(x[:0], y[:0]).shape == (0,)


@pytest.mark.parametrize("keyframe", [0, 5])
def test_visible_fraction_matches_a_per_ray_loop(tmp_path, keyframe):
    """Each agent's visible fraction: over every ray that meets it, the share whose nearest hit is that agent (the
    first listed of equally near hits), against a loop over each ray's intersections."""
    import open3d as o3d

    job = scene_jobs(get_preset("tiny"), 0, tmp_path)[0]
    world = build_world(job)
    t = keyframe * 0.5
    pose = world.global_from_ego(t)
    snap, _ = world.snapshot(t, pose[:3, 3])
    poses = [pose @ c.ego_from_cam for c in world.rig.cameras]
    rays = [camera_directions(c, 8).reshape(-1, 3) for c in world.rig.cameras]
    n_agents = len(world.agents)
    got = _visible_fraction(snap, poses, rays, n_agents)

    seen, whole = np.zeros(n_agents), np.zeros(n_agents)
    for p, r in zip(poses, rays, strict=True):
        d = (r @ p[:3, :3].T).astype(np.float32)
        query = np.concatenate([np.broadcast_to(p[:3, 3], d.shape), d], 1).astype(np.float32)
        hits = snap.scene.list_intersections(o3d.core.Tensor(query), nthreads=render.RAY_THREADS)
        splits, t_hit = hits["ray_splits"].numpy(), hits["t_hit"].numpy()
        geometry, primitive = hits["geometry_ids"].numpy(), hits["primitive_ids"].numpy()
        for i in range(len(d)):
            best, best_agent, met = math.inf, -1, set()
            for h in range(splits[i], splits[i + 1]):
                agent = int(snap.part_agent[primitive[h] // 12]) if geometry[h] == PARTS else -1
                if agent >= 0:
                    met.add(agent)
                if t_hit[h] < best:
                    best, best_agent = t_hit[h], agent
            if best_agent >= 0:
                seen[best_agent] += 1
            for agent in met:
                whole[agent] += 1
    want = np.where(whole > 0, seen / np.maximum(whole, 1), 0.0)
    np.testing.assert_array_equal(got, want)
    assert (whole > 0).sum() >= 3 and 0 < got.max() <= 1  # the test sees objects, some of them whole


def test_a_buildings_seed_keeps_another_worlds_buildings_and_draws_new_scenes(tmp_path):
    """`buildings_seed`: seed 1's scenes (routes, agents) among seed 0's buildings; without it, nothing changes."""
    preset = get_preset("tiny")
    default, other = scene_jobs(preset, 0, tmp_path)[0], scene_jobs(preset, 1, tmp_path)[0]
    mixed = scene_jobs(preset, 1, tmp_path, buildings_seed=0)[0]
    w0, w1, wm = build_world(default), build_world(other), build_world(mixed)
    assert np.array_equal(wm.buildings, w0.buildings) and not np.array_equal(w1.buildings, w0.buildings)
    boxes = [w.snapshot(0.0, w.global_from_ego(0.0)[:3, 3])[1] for w in (w0, w1, wm)]
    assert np.array_equal(boxes[2], boxes[1])  # the scene is seed 1's
    assert boxes[2].shape != boxes[0].shape or not np.array_equal(boxes[2], boxes[0])
    assert np.array_equal(build_world(scene_jobs(preset, 0, tmp_path, buildings_seed=None)[0]).buildings, w0.buildings)
