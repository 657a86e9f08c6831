"""fusion: multimodal 3D perception (camera + LiDAR + text) on nuScenes and a synthetic nuScenes-format world."""

__version__ = "0.1.0"
