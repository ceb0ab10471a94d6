"""Array steps that several stages share, in one place: in-plane block means (the
coarse grids of alignment, skull strip and the networks) and z padding (the
networks' slice multiple)."""

from __future__ import annotations

import numpy as np


def block_mean(volume: np.ndarray, f: int, fz: int = 1) -> np.ndarray:
    """Block means of a (z, y, x) volume over fz slices and f x f in-plane voxels; a remainder
    slice, row or column is dropped. Sums one axis at a time, the last by strided adds: several
    times faster than one mean over a 5-d view, which matters on 200-slice studies."""
    if f == 1 and fz == 1:
        return volume
    nz, ny, nx = (n - n % k for n, k in zip(volume.shape, (fz, f, f)))
    out = volume[:nz, :ny, :nx]
    if fz > 1:
        out = out.reshape(nz // fz, fz, ny, nx).sum(axis=1)
    if f > 1:
        out = out.reshape(-1, ny // f, f, nx).sum(axis=2)
        out = sum(out[:, :, k::f] for k in range(1, f)) + out[:, :, 0::f]
    return out / np.asarray(f * f * fz, dtype=out.dtype)


def pad_z(volume: np.ndarray, multiple: int, value) -> np.ndarray:
    """Pad the slice axis (axis 0) at the end up to a multiple, with `value`."""
    pad = (-volume.shape[0]) % multiple
    return np.pad(volume, ((0, pad),) + ((0, 0),) * (volume.ndim - 1), constant_values=value)
