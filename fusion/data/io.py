"""Reading sensor files, with errors that name the file and what is wrong with it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from fusion.data.summary import DatasetError
from fusion.files import atomic_target


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file through `atomic_target`: readers see the old file or the new, never half."""
    with atomic_target(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def read_points(path: str | os.PathLike) -> np.ndarray:
    """A nuScenes `.pcd.bin`: <float32: n, 5> x, y, z, intensity, ring in the sensor frame."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.float32)
    except FileNotFoundError:
        raise DatasetError(f"{path}: LiDAR file is missing") from None
    if raw.size % 5:
        raise DatasetError(f"{path}: {raw.size * 4} bytes is not a whole number of points (5 float32 = 20 bytes "
                           "each): truncated or not a nuScenes .pcd.bin")  # fmt: skip
    points = raw.reshape(-1, 5)
    if not np.isfinite(points).all():
        raise DatasetError(f"{path}: corrupted point cloud ({int((~np.isfinite(points)).any(1).sum())} points with "
                           "NaN or infinite values)")  # fmt: skip
    return points


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """An RGB image <uint8: H, W, 3>, resized (bilinear) to `size` = (width, height) when given."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != tuple(size):
                im = im.resize(tuple(size), Image.BILINEAR)
            return np.asarray(im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: camera image is missing") from None
    except OSError as e:  # PIL: truncated data, unknown format
        raise DatasetError(f"{path}: unreadable or truncated image ({e})") from None


def resize_intrinsics(k: np.ndarray, old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """Intrinsics after resizing an image from `old` to `new` (width, height), pixel centres kept aligned.

    A pixel centre u + 0.5 maps to (u + 0.5) * s, so f' = f * s and c' = (c + 0.5) * s - 0.5.
    """
    sx, sy = new[0] / old[0], new[1] / old[1]
    out = np.array(k, dtype=np.float64)
    out[0, :] *= sx
    out[1, :] *= sy
    out[0, 2] += 0.5 * sx - 0.5
    out[1, 2] += 0.5 * sy - 0.5
    return out


class ImageCache:
    """Decoded, resized images as .npy files, so that epochs after the first do not decode JPEGs again.

    Keyed by the file's path, size on disk, modification time and the target size; written atomically, so worker
    processes can share it. A cached image is bit-identical to `read_image`'s result.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def read(self, path: str | os.PathLike, size: tuple[int, int] | None) -> np.ndarray:
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DatasetError(f"{path}: camera image is missing") from None
        key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{size}".encode()).hexdigest()
        entry = self.directory / key[:2] / f"{key}.npy"
        if entry.exists():
            return np.load(entry)
        image = read_image(path, size)
        with atomic_target(entry) as tmp:  # every rank's workers fill the cache, on every node
            np.save(tmp, image)
        return image
