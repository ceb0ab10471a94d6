"""Skull strip on the model grid: the largest soft-tissue object enclosed by bone.

Works at half the model grid's in-plane resolution (1 mm at the default grid),
which is plenty for a mask and four times cheaper. Handles studies whose air
was clipped to 0 HU, as some exports do.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .volume import block_mean

BONE_HU = 100.0
SOFT_HU = (-15.0, 100.0)
HEAD_HU = 10.0                 # what the head encloses (also clipped exports, whose air is 0 HU)
ERODE_MM = 3.0


def brain_mask(hu: np.ndarray, spacing_xy: float) -> np.ndarray:
    """Boolean (z, y, x) brain mask on the same grid as `hu`."""
    nz, ny, nx = hu.shape
    f = working_factor(hu.shape)
    small = block_mean(hu, f)
    inplane = np.zeros((1, 3, 3), bool)
    inplane[0] = ndimage.generate_binary_structure(2, 1)

    bone = ndimage.binary_dilation(small > BONE_HU, structure=inplane)
    soft = (small > SOFT_HU[0]) & (small < SOFT_HU[1]) & ~bone
    # Clipped exports store air as 0 HU, which looks like CSF: keep only what the head encloses.
    head = ndimage.binary_fill_holes(small > HEAD_HU, structure=np.ones((1, 3, 3), bool))
    head = np.stack([ndimage.binary_fill_holes(s) for s in head])
    soft &= head
    # Erode in-plane so scalp, orbit fat and neck let go of the brain, keep the biggest piece, grow it back.
    n_erode = erosion_steps(spacing_xy * f)
    core = ndimage.binary_erosion(soft, structure=inplane, iterations=n_erode)
    labels, n = ndimage.label(core)
    if n == 0:
        return np.zeros_like(hu, dtype=bool)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    brain = labels == 1 + int(np.argmax(sizes))
    brain = ndimage.binary_dilation(brain, structure=inplane, iterations=n_erode) & soft
    brain = np.stack([ndimage.binary_fill_holes(s) for s in brain])
    if f > 1:
        brain = brain.repeat(f, axis=1).repeat(f, axis=2)
    return brain


def working_factor(shape) -> int:
    """In-plane reduction of the working grid: 2 when the grid halves evenly."""
    return 2 if shape[1] % 2 == 0 and shape[2] % 2 == 0 else 1


def erosion_steps(mm: float) -> int:
    return max(1, int(round(ERODE_MM / mm)))
