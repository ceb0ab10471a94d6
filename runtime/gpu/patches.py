"""Mirrored-patch batches on the device (runtime.patches, step for step).

Region centroids are summed on the device and the crop kernel reads them
there, writing the pairs straight into the classifier's input buffer. The
sums come back to the host only at the end, to report crop origins and which
regions were found.
"""

from __future__ import annotations

import numpy as np

from ..patches import MIN_REGION_VOXELS, PatchBatch, crop_origin
from ..regions import REGION_NAMES
from .device import Buffer
from .interfaces import Device


def batch_on_device(device: Device, image: Buffer, labels: Buffer, regions: tuple[str, ...], pairs: Buffer) -> Buffer:
    """Fills `pairs` (float32 (B, 2, 2, z, y, x), the classifier's input buffer); returns the
    centroid sums (uint64 (B, 4): z, y, x index sums and voxel count)."""
    nz, ny, nx = image.shape
    cz, cy, cx = pairs.shape[3:]
    index = device.put(np.array([REGION_NAMES.index(r) for r in regions], np.int32))
    sums = device.empty((len(regions), 4), np.uint64)
    device.fill(sums)
    device.launch("region_sums", nz * ny, labels=labels, nz=nz, ny=ny, nx=nx, region=index, B=len(regions),
                  sums=sums)
    device.launch("crop_pairs", pairs.size, image=image, labels=labels, nz=nz, ny=ny, nx=nx, region=index,
                  B=len(regions), sums=sums, cz=cz, cy=cy, cx=cx, out=pairs)
    return sums


def host_batch(regions: tuple[str, ...], sums: np.ndarray, pairs: np.ndarray | None, shape,
               crop: tuple[int, int, int]) -> PatchBatch:
    """The PatchBatch record from the device's centroid sums (and the pairs, when read back)."""
    origins, assessable = [], []
    for s in sums.astype(np.float64):
        centre = s[:3] / s[3] if s[3] else np.array(shape) / 2
        origins.append(crop_origin(centre, crop))
        assessable.append(bool(s[3] >= MIN_REGION_VOXELS))
    return PatchBatch(regions=tuple(regions), pairs=pairs, origins=tuple(origins), assessable=tuple(assessable),
                      crop=(int(crop[0]), int(crop[1]), int(crop[2])))
