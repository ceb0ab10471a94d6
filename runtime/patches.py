"""Mirrored-patch batching: one batch of left/right crop pairs per classifier.

For each region the crop window is placed on the union of the left region and
the x-mirrored right region, so the two crops sit at exactly mirrored positions
and the right crop, flipped, looks like a left one. Each crop carries the
region mask as a second channel. Layout: (pairs, side[left, right], channel[ct,
mask], z, y, x), written into one preallocated array (the engine input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .regions import REGION_NAMES, label_id

MIN_REGION_VOXELS = 50


@dataclass(frozen=True)
class PatchBatch:
    regions: tuple[str, ...]
    pairs: np.ndarray | None                  # float32 (B, 2, 2, z, y, x); None if they stayed on the GPU
    origins: tuple[tuple[int, int, int], ...]  # crop corner (z, y, x) on the model grid, left side
    assessable: tuple[bool, ...]              # region found on at least one side
    crop: tuple[int, int, int]                # (z, y, x) size of every crop


def host_pairs(batch: PatchBatch) -> np.ndarray:
    """The crop pairs of a batch built here by build_batch (only the GPU path leaves them out)."""
    if batch.pairs is None:
        raise ValueError("this batch's crop pairs stayed on the GPU")
    return batch.pairs


def build_batch(image: np.ndarray, labels: np.ndarray, regions: tuple[str, ...],
                crop: tuple[int, int, int]) -> PatchBatch:
    """`image`: windowed model-grid volume; `labels`: model-grid region labels."""
    cz, cy, cx = crop
    mirrored_image = image[:, :, ::-1]
    mirrored_labels = labels[:, :, ::-1]
    pairs = np.empty((len(regions), 2, 2, cz, cy, cx), np.float32)
    origins, assessable = [], []
    for b, name in enumerate(regions):
        r = REGION_NAMES.index(name)
        left = labels == label_id(r, "left")
        right = mirrored_labels == label_id(r, "right")
        union = left | right
        found = int(union.sum()) >= MIN_REGION_VOXELS
        origin = crop_origin(np.argwhere(union).mean(axis=0) if union.any() else np.array(image.shape) / 2, crop)
        pairs[b, 0, 0] = _crop(image, origin, crop, fill=-1.0)
        pairs[b, 0, 1] = _crop(left, origin, crop, fill=0.0)
        pairs[b, 1, 0] = _crop(mirrored_image, origin, crop, fill=-1.0)
        pairs[b, 1, 1] = _crop(right, origin, crop, fill=0.0)
        origins.append(origin)
        assessable.append(found)
    return PatchBatch(regions=tuple(regions), pairs=pairs, origins=tuple(origins), assessable=tuple(assessable),
                      crop=(int(crop[0]), int(crop[1]), int(crop[2])))


def crop_origin(centre, crop) -> tuple[int, int, int]:
    """Crop corner centred on the centroid (floor(x + 0.5): no banker's rounding of half voxels)."""
    z, y, x = (int(np.floor(c - (s - 1) / 2 + 0.5)) for c, s in zip(centre, crop))
    return z, y, x


def _crop(volume: np.ndarray, origin, size, fill: float) -> np.ndarray:
    """Crop that may run past the volume edge; the outside is `fill`."""
    out = np.full(size, fill, np.float32)
    src = tuple(slice(max(0, o), min(n, o + s)) for o, s, n in zip(origin, size, volume.shape))
    dst = tuple(slice(sl.start - o, sl.stop - o) for sl, o in zip(src, origin))
    if all(sl.stop > sl.start for sl in src):
        out[dst] = volume[src]
    return out
