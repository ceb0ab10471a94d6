"""Resample a study into the model grid, and window it for the networks.

The model grid lives in model space (see align.py): x = patient left, centred on
the mid-sagittal plane, so flipping the x axis of any model-grid array swaps the
patient's sides exactly. In-plane spacing and field of view come from the model
card; slices stay native unless thinner than the card allows, in which case they
are averaged into thick slabs (a thick MPR, as radiologists read ASPECTS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .align import Alignment
from .modelcard import GridSpec
from .read import Study

AIR_HU = -1024.0


@dataclass(frozen=True)
class ModelGrid:
    shape: tuple[int, int, int]              # (z, y, x)
    spacing: tuple[float, float, float]      # (x, y, z) mm
    origin: tuple[float, float, float]       # model-space mm of voxel (0, 0, 0)
    slab: int                                # input slices averaged into one grid slice (1 = native)

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def index_to_model(self) -> np.ndarray:
        m = np.diag([*self.spacing, 1.0])
        m[:3, 3] = self.origin
        return m


def slab_plan(native_z: float, spec: GridSpec) -> tuple[int, float]:
    """(input slices per grid slice, grid slice thickness in mm): slices thinner than the card's
    minimum are averaged into slabs of about its reformat thickness."""
    if native_z < spec.min_slice_mm:
        slab = max(1, int(round(spec.reformat_slice_mm / native_z)))
        return slab, slab * native_z
    return 1, native_z


def model_grid(study: Study, alignment: Alignment, spec: GridSpec) -> ModelGrid:
    """Fixed in-plane field of view around the head; z spans the slices the study covers."""
    slab, sz = slab_plan(study.spacing[2], spec)
    sx, sy = spec.spacing_mm
    nx, ny = spec.shape_xy
    # z spans the first to the last slice, measured at the centre of the stack.
    nz_s, ny_s, nx_s = study.hu.shape
    study_index_to_model = np.linalg.inv(alignment.matrix) @ study.affine
    ends = [(study_index_to_model @ np.array([(nx_s - 1) / 2, (ny_s - 1) / 2, k, 1.0]))[2] for k in (0, nz_s - 1)]
    z_lo, z_hi = min(ends), max(ends)
    nz = max(1, int(np.floor((z_hi - z_lo) / sz + 1e-6)) + 1)
    origin = (-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, float(z_lo))
    return ModelGrid(shape=(nz, ny, nx), spacing=(sx, sy, sz), origin=origin, slab=slab)


def resample(study: Study, alignment: Alignment, grid: ModelGrid, volume: np.ndarray | None = None,
             nearest: bool = False) -> np.ndarray:
    """HU on the model grid: trilinear through one 4x4, then slab-average thin slices.

    `volume` resamples another array on the study's grid instead (a label map, with
    `nearest=True`: no slab averaging, the slab's centre sample)."""
    source = study.hu if volume is None else volume
    image = sitk.GetImageFromArray(source)            # physical == voxel index: the affine does the geometry
    model_to_index = np.linalg.inv(study.affine) @ alignment.matrix
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(model_to_index[:3, :3].ravel().tolist())
    transform.SetTranslation(model_to_index[:3, 3].tolist())
    nz, ny, nx = grid.shape
    sx, sy, sz = grid.spacing
    sub = sz / grid.slab
    ox, oy, oz = grid.origin
    if nearest:
        out = sitk.Resample(image, (nx, ny, nz), transform, sitk.sitkNearestNeighbor, (ox, oy, oz), (sx, sy, sz),
                            (1, 0, 0, 0, 1, 0, 0, 0, 1), 0, image.GetPixelID())
        return sitk.GetArrayFromImage(out)
    out = sitk.Resample(image, (nx, ny, nz * grid.slab), transform, sitk.sitkLinear,
                        (ox, oy, oz - (grid.slab - 1) / 2 * sub), (sx, sy, sub), (1, 0, 0, 0, 1, 0, 0, 0, 1),
                        AIR_HU if volume is None else 0.0, sitk.sitkFloat32)
    hu = sitk.GetArrayViewFromImage(out).reshape(nz, grid.slab, ny, nx)
    return hu.mean(axis=1) if grid.slab > 1 else np.array(hu[:, 0])


def window(hu: np.ndarray, brain: np.ndarray, level: float, width: float) -> np.ndarray:
    """Clip to the stroke window and map to [-1, 1]; everything outside the brain is -1."""
    lo = level - width / 2.0
    x = np.clip((hu - lo) / width, 0.0, 1.0) * 2.0 - 1.0
    return np.where(brain, x, -1.0).astype(np.float32)


def to_study_grid(study: Study, alignment: Alignment, grid: ModelGrid, labels: np.ndarray) -> np.ndarray:
    """A model-grid label map back on the study's own voxels (nearest): what the expert maps and a
    DICOM SEG are compared with. A thin study slice takes the label of the slab it falls in."""
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    study_index_to_model = np.linalg.inv(alignment.matrix) @ study.affine
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(study_index_to_model[:3, :3].ravel().tolist())
    transform.SetTranslation(study_index_to_model[:3, 3].tolist())
    nz, ny, nx = study.hu.shape
    out = sitk.Resample(image, (nx, ny, nz), transform, sitk.sitkNearestNeighbor, (0, 0, 0), (1, 1, 1),
                        (1, 0, 0, 0, 1, 0, 0, 0, 1), 0, image.GetPixelID())
    return sitk.GetArrayFromImage(out)
