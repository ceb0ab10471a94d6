"""Array steps that several stages share, in one place: in-plane block means (the
coarse grids of alignment, skull strip and the networks) and z padding (the
networks' slice multiple)."""

from __future__ import annotations

import numpy as np


def block_mean(volume: np.ndarray, f: int) -> np.ndarray:
    """In-plane f x f block means of a (z, y, x) volume; a remainder row or column is dropped."""
    if f == 1:
        return volume
    nz, ny, nx = volume.shape
    return volume[:, : ny - ny % f, : nx - nx % f].reshape(nz, ny // f, f, nx // f, f).mean(axis=(2, 4))


def pad_z(volume: np.ndarray, multiple: int, value) -> np.ndarray:
    """Pad the slice axis (axis 0) at the end up to a multiple, with `value`."""
    pad = (-volume.shape[0]) % multiple
    return np.pad(volume, ((0, pad),) + ((0, 0),) * (volume.ndim - 1), constant_values=value)
