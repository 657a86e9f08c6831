"""The static world of one location: a grid of roads with lanes, sidewalks and crossings, and city blocks of buildings.

Everything here is analytic (a function of global x, y), so the LiDAR, the cameras, the map raster and the agent placer
all agree on where the road is without sharing a raster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Ground classes returned by `CityLayout.ground_class`.
ROAD, MARKING, SIDEWALK, LOT = 0, 1, 2, 3

LANE_WIDTH = 3.5
SIDEWALK_WIDTH = 3.5


@dataclass(frozen=True)
class CityLayout:
    """A square city of `n_roads` x `n_roads` straight roads, `spacing` metres apart, in the global frame.

    Road centre lines run along x at y = offset + k * spacing and along y at x = offset + k * spacing, offset =
    spacing / 2. Each road has two lanes per direction: inner (driving) lanes at |u| = 1.75 m and outer
    (parking/cycling) lanes at |u| = 5.25 m from the centre line, then a sidewalk.
    """

    n_roads: int = 7
    spacing: float = 96.0
    right_hand_traffic: bool = True

    @property
    def half_width(self) -> float:
        return 2 * LANE_WIDTH

    @property
    def extent(self) -> float:
        """Side of the square map in metres; the map covers [0, extent] in x and y."""
        return self.n_roads * self.spacing

    @property
    def road_centres(self) -> np.ndarray:
        return self.spacing / 2 + self.spacing * np.arange(self.n_roads)

    def axis_distance(self, coord: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Signed offset of `coord` from the nearest road centre line across it, and that centre line."""
        idx = np.clip(np.round((coord - self.spacing / 2) / self.spacing), 0, self.n_roads - 1)
        centre = self.spacing / 2 + idx * self.spacing
        return coord - centre, centre

    def ground_class(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground class (ROAD, MARKING, SIDEWALK, LOT) at global points. <uint8: x.shape>."""
        x, y = np.asarray(x), np.asarray(y)
        u_y, _ = self.axis_distance(y)  # offset across roads that run along x
        u_x, _ = self.axis_distance(x)  # offset across roads that run along y
        dy, dx = np.abs(u_y), np.abs(u_x)
        hw = self.half_width
        on_xroad, on_yroad = dy < hw, dx < hw
        road = on_xroad | on_yroad
        junction = on_xroad & on_yroad
        lines_x = on_xroad & ~(dx < hw + 4.0)  # x-road points away from a crossing road: lane markings there
        lines_y = on_yroad & ~(dy < hw + 4.0)
        out = np.full(x.shape, LOT, dtype=np.uint8)
        out[(dy < hw + SIDEWALK_WIDTH) | (dx < hw + SIDEWALK_WIDTH)] = SIDEWALK
        out[road] = ROAD
        # Centre line (solid) and lane dividers (dashed, 3 m on / 3 m off).
        marking = lines_x & (dy < 0.08)
        marking |= lines_y & (dx < 0.08)
        # The periodic tests (np.mod, slow on floats) run on each pattern's few candidates only.
        marking |= _periodic(lines_x & (np.abs(dy - LANE_WIDTH) < 0.07), x, 6.0, 3.0)
        marking |= _periodic(lines_y & (np.abs(dx - LANE_WIDTH) < 0.07), y, 6.0, 3.0)
        # Zebra crossings just outside each junction.
        marking |= _periodic(on_xroad & (dx > hw + 0.5) & (dx < hw + 3.5), y, 1.0, 0.5)
        marking |= _periodic(on_yroad & (dy > hw + 0.5) & (dy < hw + 3.5), x, 1.0, 0.5)
        out[marking & ~junction] = MARKING
        return out

    def map_mask(self, resolution: float = 0.1) -> np.ndarray:
        """The nuScenes semantic prior (drivable surface and sidewalks) as an image, row 0 at the largest y.

        Pixel (row, col) covers global x = (col + 0.5) * resolution, y = extent - (row + 0.5) * resolution, which is
        the devkit's `MapMask.transform_matrix`. <uint8: H, W>, 255 on the prior, 0 elsewhere.
        """
        n = round(self.extent / resolution)
        centres = (np.arange(n) + 0.5) * resolution
        u_x, _ = self.axis_distance(centres)
        on_col = np.abs(u_x) < self.half_width + SIDEWALK_WIDTH  # columns crossing a y-road (by x)
        on_row = (np.abs(u_x) < self.half_width + SIDEWALK_WIDTH)[::-1]  # rows crossing an x-road (by y)
        return np.where(on_row[:, None] | on_col[None, :], 255, 0).astype(np.uint8)

    def lane_heading(self, along_x: bool, u: np.ndarray) -> np.ndarray:
        """Direction of travel (+1 or -1 along the road axis) of the lane at signed offset `u` from the centre."""
        right_side = u < 0 if along_x else u > 0  # the right-hand side of a road driven in its + direction
        sign = np.where(right_side, 1.0, -1.0)
        return sign if self.right_hand_traffic else -sign

    def buildings(self, rng: np.random.Generator) -> np.ndarray:
        """Building boxes inside every block: <float64: n, 7> as (x, y, z_centre, w, l, h, yaw)."""
        inset = self.half_width + SIDEWALK_WIDTH + 1.0
        lo = self.road_centres[:-1] + inset
        hi = self.road_centres[1:] - inset
        boxes = []
        n_lots = 3
        for bx0, bx1 in zip(lo, hi, strict=True):
            for by0, by1 in zip(lo, hi, strict=True):
                step_x, step_y = (bx1 - bx0) / n_lots, (by1 - by0) / n_lots
                for i in range(n_lots):
                    for j in range(n_lots):
                        if (i == 1 and j == 1) or rng.random() < 0.12:  # courtyards and empty lots
                            continue
                        gap = rng.uniform(0.5, 3.0, size=4)
                        x0, x1 = bx0 + i * step_x + gap[0], bx0 + (i + 1) * step_x - gap[1]
                        y0, y1 = by0 + j * step_y + gap[2], by0 + (j + 1) * step_y - gap[3]
                        h = float(rng.choice([rng.uniform(6, 15), rng.uniform(15, 45)], p=[0.6, 0.4]))
                        boxes.append(((x0 + x1) / 2, (y0 + y1) / 2, h / 2, y1 - y0, x1 - x0, h, 0.0))
        return np.asarray(boxes, dtype=np.float64)


def _periodic(candidates: np.ndarray, coord: np.ndarray, period: float, on: float) -> np.ndarray:
    """`candidates` & (coord mod `period` < `on`), the modulo taken at the candidates only."""
    out = candidates.copy()
    out[candidates] = np.mod(coord[candidates], period) < on
    return out
