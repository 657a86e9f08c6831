"""Camera images: what the devkit projects with our calibrations lands on the pixels our renderer drew."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.path import Path as Polygon
from nuscenes.utils.geometry_utils import BoxVisibility, view_points
from PIL import Image
from pyquaternion import Quaternion
from scipy.spatial import ConvexHull

from fusion.data.synth.generate import scene_jobs
from fusion.data.synth.presets import get_preset
from fusion.data.synth.render import PixelRays, render_image
from fusion.data.synth.rig import camera_directions
from fusion.data.synth.scene import build_world, token


def _camera_views(nusc, root):
    """(sample_data record, job, world, camera, pixel rays, seconds into the scene) for every camera image."""
    jobs = {j.name: j for j in scene_jobs(get_preset("tiny"), 0, root)}
    for scene in nusc.scene:
        job = jobs[scene["name"]]
        world = build_world(job)
        rays = {c.channel: PixelRays.for_camera(camera_directions(c), c.ego_from_cam) for c in world.rig.cameras}
        sample_token = scene["first_sample_token"]
        while sample_token:
            sample = nusc.get("sample", sample_token)
            for cam in world.rig.cameras:
                sd = nusc.get("sample_data", sample["data"][cam.channel])
                yield sd, job, world, cam, rays[cam.channel], (sd["timestamp"] - job.start_us) / 1e6
            sample_token = sample["next"]


def test_devkit_box_projections_cover_the_rendered_object_pixels(tiny_nusc, tiny_root):
    nusc = tiny_nusc
    checked, moving = 0, 0
    for sd, job, world, cam, rays, t in _camera_views(nusc, tiny_root):
        global_from_cam = world.global_from_ego(t) @ cam.ego_from_cam
        snap, _ = world.snapshot(t, global_from_cam[:3, 3])
        hit = snap.cast(global_from_cam[:3, 3], rays.dirs @ global_from_cam[:3, :3].T)
        agent_image = snap.hit_agent(hit).reshape(rays.height, rays.width)
        agent_of = {token(job.seed, "instance", job.name, a): a for a in range(len(world.agents))}
        # The devkit's own projection: box in global -> ego (camera's pose) -> camera -> image.
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        _, boxes, intrinsic = nusc.get_sample_data(sd["token"], box_vis_level=BoxVisibility.ANY)
        for cam_box in boxes:
            ann = nusc.get("sample_annotation", cam_box.token)
            box = nusc.get_box(ann["token"])
            # The annotation is at the LiDAR keyframe; the camera fired a few ms later: move the box by its velocity.
            dt = (sd["timestamp"] - nusc.get("sample", ann["sample_token"])["timestamp"]) / 1e6
            box.translate(np.nan_to_num(nusc.box_velocity(ann["token"])) * dt)
            box.translate(-np.array(pose["translation"]))
            box.rotate(Quaternion(pose["rotation"]).inverse)
            box.translate(-np.array(cs["translation"]))
            box.rotate(Quaternion(cs["rotation"]).inverse)
            corners = box.corners()
            if corners[2].min() < 0.5:
                continue
            uv = view_points(corners, np.array(intrinsic), normalize=True)[:2].T
            hull = Polygon(uv[ConvexHull(uv).vertices])
            rows, cols = np.nonzero(agent_image == agent_of[ann["instance_token"]])
            if len(rows) < 20:
                continue
            inside = hull.contains_points(np.column_stack([cols + 0.5, rows + 0.5]), radius=0.5)
            assert inside.mean() > 0.995, (sd["channel"], ann["token"], inside.mean())
            checked += 1
            moving += abs(dt) * np.linalg.norm(np.nan_to_num(nusc.box_velocity(ann["token"]))) > 0.1
    assert checked > 100 and moving > 5, (checked, moving)


def test_written_images_are_the_rendered_images(tiny_nusc, tiny_root):
    for sd, _, world, cam, rays, t in list(_camera_views(tiny_nusc, tiny_root))[:3]:
        global_from_cam = world.global_from_ego(t) @ cam.ego_from_cam
        snap, _ = world.snapshot(t, global_from_cam[:3, 3])
        rendered = render_image(snap, global_from_cam, rays, world.sun).astype(np.float64)
        jpeg = np.asarray(Image.open(Path(tiny_root) / sd["filename"])).astype(np.float64)
        assert jpeg.shape == (sd["height"], sd["width"], 3)
        assert np.abs(jpeg - rendered).mean() < 4.0


def test_devkit_renders_a_sample(tiny_nusc, tmp_path):
    nusc = tiny_nusc
    sample = nusc.sample[1]
    nusc.render_sample(sample["token"], out_path=str(tmp_path / "sample.png"), verbose=False)
    nusc.render_sample_data(sample["data"]["LIDAR_TOP"], nsweeps=3, out_path=str(tmp_path / "lidar.png"),
                            verbose=False)  # fmt: skip
    nusc.render_sample_data(sample["data"]["CAM_FRONT"], out_path=str(tmp_path / "cam.png"), verbose=False)
    for name in ("sample.png", "lidar.png", "cam.png"):
        assert (tmp_path / name).stat().st_size > 10_000
