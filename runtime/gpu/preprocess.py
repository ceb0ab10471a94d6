"""Study on the device -> model-grid HU -> brain mask -> windowed network image.

The same steps as runtime.resample and runtime.strip, as kernels on one stream:
the study goes up once, and the windowed image is written where the coarse
VB-Net's input is pooled from. Nothing comes back to the host here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..align import Alignment
from ..read import Study
from ..resample import AIR_HU, ModelGrid
from ..strip import BONE_HU, HEAD_HU, SOFT_HU, erosion_steps, working_factor
from .device import Buffer
from .interfaces import Device


@dataclass(frozen=True)
class DeviceImage:
    hu: Buffer              # float32 (z, y, x) model-grid HU
    image: Buffer           # float32 (z, y, x) stroke window in [-1, 1], -1 outside the brain
    brain: Buffer           # uint8 brain mask on the strip's working grid (factor x coarser in-plane)
    brain_voxels: Buffer    # uint64 (1,) brain voxels on the working grid
    factor: int


def resample_matrix(study: Study, alignment: Alignment, grid: ModelGrid) -> np.ndarray:
    """3x4: output (x, y, sub-slice) index -> study (i, j, k) index, as runtime.resample composes it."""
    sx, sy, sz = grid.spacing
    sub = sz / grid.slab
    ox, oy, oz = grid.origin
    index_to_model = np.array([[sx, 0, 0, ox], [0, sy, 0, oy], [0, 0, sub, oz - (grid.slab - 1) / 2 * sub],
                               [0, 0, 0, 1.0]])
    return (np.linalg.inv(study.affine) @ alignment.matrix @ index_to_model)[:3]


def resample_on_device(device: Device, study_hu: Buffer, study: Study, alignment: Alignment, grid: ModelGrid) -> Buffer:
    snz, sny, snx = study_hu.shape
    nz, ny, nx = grid.shape
    m = device.put(resample_matrix(study, alignment, grid).astype(np.float64))
    hu = device.empty(grid.shape, np.float32)
    device.launch("resample_slab", hu.size, src=study_hu, snx=snx, sny=sny, snz=snz, m=m, fill=AIR_HU, slab=grid.slab,
                  out=hu, nx=nx, ny=ny, nz=nz)
    return hu


def strip_on_device(device: Device, hu: Buffer, spacing_xy: float) -> tuple[Buffer, Buffer, int]:
    """runtime.strip.brain_mask, step for step, on the half-resolution working grid."""
    nz, ny, nx = hu.shape
    f = working_factor(hu.shape)
    wz, wy, wx = nz, ny // f, nx // f
    n = wz * wy * wx
    small = device.empty((wz, wy, wx), np.float32)
    device.launch("pool_mean", n, src=hu, nz=nz, ny=ny, nx=nx, f=f, z0=0, y0=0, x0=0, vz=wz, vy=wy, vx=wx, fill=0.0,
                  out=small, oz=wz, oy=wy, ox=wx)
    mask = lambda: device.empty((wz, wy, wx), np.uint8)          # noqa: E731
    above_bone, bone_near, head, soft, core, brain, grown = (mask() for _ in range(7))
    dims = {"nz": wz, "ny": wy, "nx": wx}
    device.launch("threshold_above", n, v=small, n=n, t=BONE_HU, out=above_bone)
    device.launch("morph_diamond", n, src=above_bone, **dims, r=1, erode=0, out=bone_near)
    device.launch("threshold_above", n, v=small, n=n, t=HEAD_HU, out=head)
    device.launch_blocks("fill_holes_slices", wz, mask=head, **dims)
    device.launch("soft_tissue", n, v=small, bone_near=bone_near, head=head, n=n, lo=SOFT_HU[0], hi=SOFT_HU[1],
                  out=soft)
    steps = erosion_steps(spacing_xy * f)
    device.launch("morph_diamond", n, src=soft, **dims, r=steps, erode=1, out=core)
    largest_component(device, core, brain)
    device.launch("morph_diamond", n, src=brain, **dims, r=steps, erode=0, out=grown)
    device.launch("mask_and", n, a=grown, b=soft, n=n, out=brain)
    device.launch_blocks("fill_holes_slices", wz, mask=brain, **dims)
    count = device.empty((1,), np.uint64)
    device.fill(count)
    device.launch("count_nonzero", n, m=brain, n=n, count=count)
    return brain, count, f


def label_components(device: Device, mask: Buffer) -> tuple[Buffer, Buffer]:
    """6-connected components of `mask`: per voxel its component's root index (-1 outside), and
    per root the component's size (uint32, indexed by root)."""
    nz, ny, nx = mask.shape
    n = mask.size
    labels = device.empty(mask.shape, np.int32)
    sizes = device.empty(mask.shape, np.uint32)
    device.fill(sizes)
    device.launch("ccl_init", n, mask=mask, n=n, lab=labels)
    device.launch("ccl_merge", n, lab=labels, nz=nz, ny=ny, nx=nx)
    device.launch("ccl_count", n, lab=labels, n=n, size=sizes)
    return labels, sizes


def largest_component(device: Device, mask: Buffer, out: Buffer) -> None:
    """Largest 6-connected component of `mask` into `out` (all zero when there is none)."""
    n = mask.size
    labels, sizes = label_components(device, mask)
    best = device.empty((1,), np.uint64)
    device.fill(best)
    device.launch("ccl_largest", n, lab=labels, size=sizes, n=n, best=best)
    device.launch("ccl_select", n, lab=labels, best=best, n=n, out=out)


def window_on_device(device: Device, hu: Buffer, brain: Buffer, factor: int, level: float, width: float) -> Buffer:
    nz, ny, nx = hu.shape
    image = device.empty(hu.shape, np.float32)
    device.launch("window_image", hu.size, hu=hu, brain_small=brain, nz=nz, ny=ny, nx=nx, f=factor,
                  lo=level - width / 2.0, width=width, out=image)
    return image


def preprocess_on_device(device: Device, study_hu: Buffer, study: Study, alignment: Alignment, grid: ModelGrid,
                         window: tuple[float, float]) -> DeviceImage:
    hu = resample_on_device(device, study_hu, study, alignment, grid)
    brain, count, f = strip_on_device(device, hu, grid.spacing[0])
    image = window_on_device(device, hu, brain, f, *window)
    return DeviceImage(hu=hu, image=image, brain=brain, brain_voxels=count, factor=f)
