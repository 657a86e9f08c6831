"""Named sizes of the synthetic world. The default, `mini`, stands in for nuScenes v1.0-mini."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

LOCATIONS = ("boston-seaport", "singapore-onenorth", "singapore-queenstown", "singapore-hollandvillage")

# v1.0-mini's ten scenes, with the devkit's predefined split of each (mini_train / mini_val).
_MINI_SCENES = (
    ("scene-0061", "singapore-onenorth", "train"),
    ("scene-0103", "boston-seaport", "val"),
    ("scene-0553", "boston-seaport", "train"),
    ("scene-0655", "boston-seaport", "train"),
    ("scene-0757", "boston-seaport", "train"),
    ("scene-0796", "singapore-queenstown", "train"),
    ("scene-0916", "singapore-queenstown", "val"),
    ("scene-1077", "singapore-hollandvillage", "train"),
    ("scene-1094", "singapore-hollandvillage", "train"),
    ("scene-1100", "singapore-hollandvillage", "train"),
)


@dataclass(frozen=True)
class Preset:
    """How much world to generate.

    `scenes` are (name, location, split) with split "train" or "val"; `splits.json` maps `synth_train` and
    `synth_val` to their names (custom names: the devkit treats its predefined split names specially).
    """

    name: str
    version: str
    scenes: tuple[tuple[str, str, str], ...]
    samples_per_scene: int = 20
    image_scale: float = 0.4  # of nuScenes' 1600 x 900
    lidar_azimuth_steps: int = 512  # per revolution, for each of the 32 beams
    sweeps_per_sample: int = 5  # LiDAR at 10 Hz with 2 Hz keyframes
    density: float = 1.0  # scales the number of objects per scene
    description: str = field(default="", compare=False)

    def with_sizes(self, **sizes) -> Preset:
        """A copy with some sizes overridden (None leaves a size as it is); checks every size."""
        p = replace(self, **{k: v for k, v in sizes.items() if v is not None})
        checks = {
            "scenes": 1 <= len(p.scenes),
            "samples_per_scene": 2 <= p.samples_per_scene <= 400,
            "image_scale": 0.05 <= p.image_scale <= 1.0,
            "lidar_azimuth_steps": 16 <= p.lidar_azimuth_steps <= 4096,
            "sweeps_per_sample": 1 <= p.sweeps_per_sample <= 20,
            "density": 0.0 <= p.density <= 5.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"preset {self.name!r}: out of range: {', '.join(bad)}")
        return p


def _trainval_scenes(n_train: int, n_val: int) -> tuple[tuple[str, str, str], ...]:
    from nuscenes.utils.splits import train, val

    picked = [(n, "train") for n in train[:n_train]] + [(n, "val") for n in val[:n_val]]
    return tuple((n, LOCATIONS[i % len(LOCATIONS)], s) for i, (n, s) in enumerate(sorted(picked)))


def get_preset(name: str) -> Preset:
    if name == "mini":
        return Preset("mini", "v1.0-mini", _MINI_SCENES, description="stand-in for v1.0-mini: its ten scenes")
    if name == "tiny":
        return Preset("tiny", "v1.0-mini", (_MINI_SCENES[0], _MINI_SCENES[1]), samples_per_scene=4,
                      image_scale=0.2, lidar_azimuth_steps=256, sweeps_per_sample=3, density=0.6,
                      description="two mini scenes of four samples, for tests")  # fmt: skip
    if name == "trainval":
        return Preset("trainval", "v1.0-trainval", _trainval_scenes(32, 8),
                      description="40 scenes named after v1.0-trainval's train (32) and val (8) scenes")  # fmt: skip
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


PRESETS = ("mini", "tiny", "trainval")
