"""An interactive 3D view of one sample: LiDAR points and box edges as one coloured triangle mesh, written by open3d.

Web 3D viewers (gradio's `Model3D`, babylon.js) draw triangle meshes reliably, so each point becomes a small
tetrahedron and each box edge a thin square prism; everything is built with numpy at once and written as `.glb`.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence

import numpy as np

from fusion.viz.draw import HIGHLIGHT, colour_of

# glTF is y-up: view frame (x right, y forward, z up) -> glTF (x, z, -y), a proper rotation.
GLTF_FROM_VIEW = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
_TETRA = np.array([[0.0, 0.0, 1.0], [0.94, 0.0, -0.33], [-0.47, 0.82, -0.33], [-0.47, -0.82, -0.33]])
_TETRA_FACES = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])
_EDGES = np.array([(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)])
# A prism along a segment: 4 vertices around each end; 8 side triangles (end caps are not needed for thin edges).
_PRISM_FACES = np.array([[0, 1, 5], [0, 5, 4], [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]])


def point_tetrahedra(points: np.ndarray, radius: float = 0.09) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices <4n, 3>, faces <4n, 3> and colours <4n, 3> (by height) of a tetrahedron at each point <n, >=3>."""
    n = len(points)
    vertices = (points[:, None, :3] + radius * _TETRA[None]).reshape(-1, 3)
    faces = (np.arange(n)[:, None, None] * 4 + _TETRA_FACES[None]).reshape(-1, 3)
    height = np.clip((points[:, 2] + 2.0) / 4.0, 0, 1)[:, None]
    colour = (np.array([40, 70, 160]) * (1 - height) + np.array([30, 170, 120]) * height) / 255.0
    return vertices, faces, np.repeat(colour, 4, axis=0)


def segment_prisms(start: np.ndarray, end: np.ndarray, width: np.ndarray, colour: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Thin square prisms along segments start/end <m, 3>, widths <m>, colours <m, 3> in [0, 1]."""
    m = len(start)
    d = end - start
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    helper = np.where(np.abs(d[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    u = np.cross(d, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(d, u)
    half = (width / 2)[:, None]
    ring = np.stack([u + v, u - v, -u - v, -u + v], axis=1) * half[:, None]  # (m, 4, 3)
    vertices = np.concatenate([start[:, None] + ring, end[:, None] + ring], axis=1).reshape(-1, 3)  # (8m, 3)
    faces = (np.arange(m)[:, None, None] * 8 + _PRISM_FACES[None]).reshape(-1, 3)
    return vertices, faces, np.repeat(colour, 8, axis=0)


def box_edges(corners: np.ndarray, names: Sequence[str], tokens: Sequence[str], width: float,
              highlight: Collection[str] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Segments of the 12 edges of boxes with corners <K, 8, 3>: start, end <12K, 3>, widths <12K>, colours."""
    k = len(corners)
    start = corners[:, _EDGES[:, 0]].reshape(-1, 3)
    end = corners[:, _EDGES[:, 1]].reshape(-1, 3)
    lit = np.array([t in highlight for t in tokens], bool)
    colour = np.array([HIGHLIGHT if h else colour_of(n) for n, h in zip(names, lit, strict=True)]).reshape(k, 3)
    widths = np.where(lit, 2.5 * width, width)
    return start, end, np.repeat(widths, 12), np.repeat(colour / 255.0, 12, axis=0)


def write_scene_glb(path: str | os.PathLike, points: np.ndarray, boxes: Sequence[tuple[np.ndarray, Sequence[str],
                    Sequence[str], float]], highlight: Collection[str] = (), max_points: int = 12000,
                    voxel: float = 0.3) -> str:  # fmt: skip
    """Write points <n, >=3> and box sets [(corners <K, 8, 3>, names, tokens, edge width m)], all in the view frame,
    to a .glb. Points are voxel down-sampled (open3d) and capped at `max_points` (a fixed-seed subset)."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points[:, :3], np.float64)))
    xyz = np.asarray(cloud.voxel_down_sample(voxel).points) if voxel > 0 and len(points) else points[:, :3]
    if len(xyz) > max_points:
        xyz = xyz[np.random.default_rng(0).choice(len(xyz), max_points, replace=False)]
    parts = [point_tetrahedra(np.asarray(xyz, np.float64))]
    for corners, names, tokens, width in boxes:
        if len(corners):
            start, end, widths, colours = box_edges(np.asarray(corners, np.float64), names, tokens, width, highlight)
            parts.append(segment_prisms(start, end, widths, colours))
    offsets = np.cumsum([0] + [len(v) for v, _, _ in parts])[:-1]
    vertices = np.concatenate([v for v, _, _ in parts]) @ GLTF_FROM_VIEW.T
    faces = np.concatenate([f + o for (_, f, _), o in zip(parts, offsets, strict=True)])
    colours = np.concatenate([c for _, _, c in parts])
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces))
    mesh.vertex_colors = o3d.utility.Vector3dVector(np.clip(colours, 0, 1))
    tmp = f"{path}.tmp.glb"
    if not o3d.io.write_triangle_mesh(tmp, mesh, write_vertex_normals=False, write_vertex_colors=True):
        raise OSError(f"{path}: open3d could not write the 3D view")
    os.replace(tmp, path)
    return str(path)
