"""Mirror similarity on the device, for runtime.align's search.

The search itself (yaw scan, Powell) stays in runtime.align and calls this for
each candidate plane: one kernel launch and three numbers back. Each level's
volume and sample points go to the device once.
"""

from __future__ import annotations

import numpy as np

from ..align import Level, mirror_plane
from .device import Buffer
from .kernels import POINTS_PER_THREAD


class DeviceMirror:
    """Callable with runtime.align's Similarity signature."""

    def __init__(self, device):
        self.device = device
        self._levels: dict[int, tuple[Level, tuple[Buffer, Buffer, Buffer, Buffer], float, float]] = {}
        self._sums = device.empty((3,), np.float64)

    def __call__(self, level: Level, centre: np.ndarray, params) -> float:
        (volume, w2i, points, a), a_sum, aa = self._upload(level)
        n, d = mirror_plane(centre, params)
        self.device.fill(self._sums)
        nz, ny, nx = volume.shape
        count = len(level.points)
        self.device.launch("mirror_sums", -(-count // POINTS_PER_THREAD), vol=volume, nx=nx, ny=ny, nz=nz, w2i=w2i,
                           points=points, a=a, N=count, pnx=n[0], pny=n[1], pnz=n[2], pd=d, sums=self._sums)
        sab, sb, sbb = self.device.get(self._sums)
        mean_b = sb / count
        cross = sab - mean_b * a_sum
        var_b = max(sbb - count * mean_b * mean_b, 0.0)
        return float(cross / (np.sqrt(aa * var_b) + 1e-9))

    def _upload(self, level: Level) -> tuple[tuple[Buffer, Buffer, Buffer, Buffer], float, float]:
        key = id(level)
        if key not in self._levels:
            a = level.values - level.values.mean()
            buffers = (self.device.put(level.volume.astype(np.float32)),
                       self.device.put(level.world_to_index[:3].astype(np.float64)),
                       self.device.put(level.points.astype(np.float64)),
                       self.device.put(a.astype(np.float64)))
            # Keep the level itself alive so its id cannot be reused by another level.
            self._levels[key] = (level, buffers, float(a.sum()), float(a @ a))
        _, buffers, a_sum, aa = self._levels[key]
        return buffers, a_sum, aa
