"""Contralateral density: what a radiologist checks, region by region.

Early ischemic change is water uptake: the affected region turns a few HU darker
than its mirror twin. Per region and side:
- difference_hu: mean parenchymal HU of the region minus that of its twin on the
  other side (both regions come from the same segmentation, so the comparison
  holds whatever the head's pose);
- hypodense_ml: the volume of region voxels at least the card's hypodense_hu below the
  voxel at the mirrored position (model space: x flipped through the mid-sagittal
  plane), both in parenchyma, after a light in-plane smoothing.
Only parenchyma (the card's parenchyma_hu) counts: CSF, calcification and bone would swamp
a few-HU signal. It is eroded in-plane by the card's erode_mm first: a voxel next to CSF is
partly CSF (partial volume), and a region that the registration shifts by a millimetre
towards a ventricle or a sulcus would otherwise read darker than its twin. A sulcus cut
obliquely by a thick slab is averaged into the voxels beside it instead: a band a few HU to
15 HU darker than the tissue on both sides, inside the window, and more of it on the more
atrophic side. Where the card sets trough_mm, a voxel that an in-plane closing of that radius
raises by trough_hu or more (a thin dark trough between brighter tissue) is left out too. An
ischemic lesion is a broad darkening with no brighter tissue on both sides, so it stays; and a
partial-volume voxel carries only its tissue fraction of the lesion's drop, so leaving it out
sharpens the lesion (engines/README.md, "The sulcus filter"). The measure needs no training,
so it transfers to real CT by construction; the rule that turns it into calls lives in
runtime.score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .modelcard import DensityRuleCard
from .regions import REGION_NAMES, SIDES, is_region, label_id
from .resample import ModelGrid

DEFAULT_PARENCHYMA_HU = (15.0, 50.0)
DEFAULT_HYPODENSE_HU = 4.0
SMOOTH_MM = 1.0
GAUSS_TRUNCATE = 4.0
MIN_VOXELS = 50


@dataclass(frozen=True)
class RegionDensity:
    region: str
    side: str                    # patient side
    mean_hu: float | None        # None when the region (or its twin) has too little parenchyma
    twin_mean_hu: float | None
    difference_hu: float | None  # mean_hu - twin_mean_hu: negative = darker than the other side
    hypodense_ml: float


@dataclass(frozen=True)
class DensityMap:
    regions: tuple[RegionDensity, ...]   # runtime.regions order, left before right
    asymmetry_hu: np.ndarray             # float32 (z, y, x): smoothed HU minus its mirror, 0 outside parenchyma


def measure(hu: np.ndarray, labels: np.ndarray, grid: ModelGrid, rule: DensityRuleCard | None) -> DensityMap:
    """The parenchyma window and the hypodensity step come from the rule's card (defaults when a
    model set has none). Only the box around the regions is filtered (`region_box`): the same values
    in a third of the time."""
    parenchyma_hu = rule.parenchyma_hu if rule else DEFAULT_PARENCHYMA_HU
    hypodense_hu = rule.hypodense_hu if rule else DEFAULT_HYPODENSE_HU
    erode_mm = rule.erode_mm if rule else 0.0
    trough_mm = rule.trough_mm if rule else 0.0
    steps = int(round(erode_mm / grid.spacing[0]))
    box = region_box(labels, grid, steps, trough_mm)
    hu, labels = hu[box], labels[box]
    smooth = _smooth_inplane(hu, grid)
    lo, hi = parenchyma_hu
    parenchyma = (hu >= lo) & (hu <= hi)
    if steps > 0:
        inplane = np.zeros((1, 3, 3), bool)
        inplane[0] = ndimage.generate_binary_structure(2, 1)
        parenchyma = ndimage.binary_erosion(parenchyma, structure=inplane, iterations=steps)
    if rule is not None and trough_mm > 0:
        parenchyma &= ~troughs(hu, labels, grid, trough_mm, rule.trough_hu)
    mirrored_ok = parenchyma[:, :, ::-1]
    asymmetry = np.zeros(grid.shape, np.float32)
    asymmetry[box] = np.where(parenchyma & mirrored_ok, smooth - smooth[:, :, ::-1], 0.0)
    darker = asymmetry[box] <= -hypodense_hu
    means, hypodense = {}, {}
    for r, name in enumerate(REGION_NAMES):
        for side in SIDES:
            region = (labels == label_id(r, side)) & parenchyma
            values = hu[region]
            means[name, side] = float(values.mean()) if values.size >= MIN_VOXELS else None
            hypodense[name, side] = float((region & mirrored_ok & darker).sum()) * grid.voxel_ml
    out = []
    for name in REGION_NAMES:
        for side in SIDES:
            twin = "right" if side == "left" else "left"
            mean, twin_mean = means[name, side], means[name, twin]
            diff = None if mean is None or twin_mean is None else mean - twin_mean
            out.append(RegionDensity(region=name, side=side, mean_hu=_round(mean), twin_mean_hu=_round(twin_mean),
                                     difference_hu=_round(diff), hypodense_ml=round(hypodense[name, side], 3)))
    return DensityMap(regions=tuple(out), asymmetry_hu=asymmetry)


def region_box(labels: np.ndarray, grid: ModelGrid, erode_steps: int, trough_mm: float) -> tuple[slice, ...]:
    """The slices holding regions, and the rows and columns around them widened by the farthest any
    filter of `measure` reaches (smoothing, then the closing's dilation and erosion, and the
    parenchyma's erosion), so that a region voxel and its mirror see what they would see in the whole
    grid. The columns are symmetric about the grid's centre, so the box's mirror is the grid's.
    Outside it the asymmetry map is 0: the report shows it on the regions only."""
    regions = is_region(labels)
    z = np.flatnonzero(regions.any(axis=(1, 2)))
    if z.size == 0:
        return (slice(None),) * 3
    y = np.flatnonzero(regions.any(axis=(0, 2)))
    x = np.flatnonzero(regions.any(axis=(0, 1)))
    reach = [_gauss_radius(SMOOTH_MM / s) + 2 * int(round(trough_mm / s)) + erode_steps for s in grid.spacing[:2]]
    height, width = labels.shape[1:]
    x0 = max(0, min(int(x[0]), width - 1 - int(x[-1])) - reach[0])
    rows = slice(max(0, int(y[0]) - reach[1]), min(height, int(y[-1]) + 1 + reach[1]))
    return slice(int(z[0]), int(z[-1]) + 1), rows, slice(x0, width - x0)


def troughs(hu: np.ndarray, labels: np.ndarray, grid: ModelGrid, radius_mm: float, depth_hu: float) -> np.ndarray:
    """Voxels at least depth_hu darker than an in-plane closing (square, radius_mm) of the lightly
    smoothed brain. Outside the brain counts as dark, so the skull never fills the brain's edge."""
    smooth = _smooth_inplane(np.where(labels > 0, hu, 0.0).astype(np.float32), grid)
    size = (1, *(2 * int(round(radius_mm / s)) + 1 for s in (grid.spacing[1], grid.spacing[0])))
    return ndimage.grey_closing(smooth, size=size) - smooth >= depth_hu


def _smooth_inplane(volume: np.ndarray, grid: ModelGrid) -> np.ndarray:
    """The light in-plane smoothing (SMOOTH_MM) both the mirror comparison and the trough filter see."""
    sigma = SMOOTH_MM / np.asarray(grid.spacing[:2])
    return ndimage.gaussian_filter(volume, (0, sigma[1], sigma[0]), truncate=GAUSS_TRUNCATE)


def _gauss_radius(sigma_px: float) -> int:
    """How many voxels `_smooth_inplane` reaches (scipy's kernel radius)."""
    return int(GAUSS_TRUNCATE * sigma_px + 0.5)


def difference_table(regions: tuple[RegionDensity, ...]) -> np.ndarray:
    """(10 regions, 2 sides [left, right]) difference_hu in runtime.regions order; NaN where not measurable."""
    table = np.full((len(REGION_NAMES), len(SIDES)), np.nan)
    for r in regions:
        if r.difference_hu is not None:
            table[REGION_NAMES.index(r.region), SIDES.index(r.side)] = r.difference_hu
    return table


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
