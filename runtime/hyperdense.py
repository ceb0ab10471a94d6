"""Hyperdense tissue on the ASPECTS levels: what must be looked at before the score is used.

ASPECTS counts early ischaemic change, which is darker tissue. Acute blood is brighter (50-90 HU
against 20-45 HU parenchyma), and the scoring does not see it: the density measure keeps to the
parenchyma window, and a bleed that fills a region makes the region unfindable. A 20 mL bleed
put into the left lentiform nucleus of a real normal head (sub005) scored "ASPECTS 10, > 6" with no
word of the blood; 5 mL there and 15 mL in the left M2 cortex scored 10 with no warning at all.
Thrombectomy is for ischaemic stroke, so such a score must not reach the stroke team alone.

A focus is tissue, on 1 mm blocks smoothed as the density measure smooths (SMOOTH_MM):
- between BLOOD_HU, and at least ABOVE_MIRROR_HU brighter than the voxel at its mirrored position
  (model space is symmetric about the mid-sagittal plane): symmetric anatomy, a dense falx or sinus
  on the midline, and beam hardening that both sides share cancel out;
- EDGE_MM or more inside the brain's outline, and so is its mirror: bone's partial volume and the
  inner table's beam hardening stay out, and a low slice cut obliquely through the skull base is not
  compared with the air or bone beyond it;
- not within CALCIFIED_MARGIN_MM of calcification or bone (blocks of CALCIFIED_HU or more): a
  calcified plexus or pineal gland and the rim its partial volume makes;
- wider than a vessel: an in-plane opening of OPENING_MM takes out lines (a dense MCA, a
  calcified vessel wall);
- on the slices that hold ASPECTS regions, and at least FOCUS_ML as one connected piece.
Measured on the real heads here (the three development studies, native and pre-aligned, and the GE
tilted head), the largest such piece is 0.13 mL; on 24 synthetic heads in scanner poses, 0.39 mL.
Blood put into real heads (README, "Hyperdense tissue"): 1.6 mL is found as 1.5 mL, 2 mL at 58 HU
as 1.6 mL, 5 mL as 4.7 mL, 15 mL in the M2 cortex as 11 mL.

This is not a haemorrhage detector, and no focus is a diagnosis: calcification that stays under
CALCIFIED_HU, contrast staining and a dense thrombus pool look the same, and a thin subdural or
subarachnoid bleed, a bleed under FOCUS_ML and one mirrored by another are not found. It says
where to look, and the score says nothing about what it finds.

Metal inside the skull on the same slices (an aneurysm clip or coil, METAL_HU and more) is named
too, with the regions near it: its streaks darken and brighten the tissue around it, and the
density measure and the DA-Net read both as asymmetry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .density import GAUSS_TRUNCATE, SMOOTH_MM
from .regions import LEFT_FIRST_LABEL, REGION_NAMES, RIGHT_FIRST_LABEL, is_region
from .resample import ModelGrid
from .strip import working_factor
from .volume import block_mean

BLOOD_HU = (50.0, 100.0)
ABOVE_MIRROR_HU = 15.0
CALCIFIED_HU = 120.0
CALCIFIED_MARGIN_MM = 2.0
EDGE_MM = 4.0
OPENING_MM = 1.0
FOCUS_ML = 1.0
METAL_HU = 1500.0         # no brain tissue or calcification here reaches it (real heads: 223 HU at most)
STREAK_MM = 20.0          # regions this close to metal are named
TOUCH_SHARE = 0.05        # a region named for a focus holds at least this share of it


@dataclass(frozen=True)
class HyperdenseFocus:
    side: str                     # patient side of its centre
    volume_ml: float
    mean_hu: float
    above_mirror_hu: float        # mean over the focus of its HU minus its mirror's
    regions: tuple[str, ...]      # "left L", ...: the ASPECTS regions it reaches, the largest share first
    slices: tuple[int, int]       # first and last model-grid slice it is on


@dataclass(frozen=True)
class Metal:
    volume_ml: float
    regions_near: tuple[str, ...]     # the ASPECTS regions within STREAK_MM of it, the largest share first


@dataclass(frozen=True)
class Hyperdensity:
    foci: tuple[HyperdenseFocus, ...]    # FOCUS_ML or larger, the largest first
    metal: Metal | None                  # metal inside the skull on the ASPECTS levels (a clip, a coil)
    mask: np.ndarray                     # bool (z, y, x) model grid: the foci's voxels, for the key images

    @property
    def volume_ml(self) -> float:
        """Every focus together: what the SR, the node's outcome and the watcher's ledger record."""
        return round(sum(f.volume_ml for f in self.foci), 2)

    @property
    def metal_ml(self) -> float:
        """0 when no metal was found: beside volume_ml in the node's outcome and the watcher's ledger."""
        return 0.0 if self.metal is None else self.metal.volume_ml


def find_hyperdense(hu: np.ndarray, labels: np.ndarray, grid: ModelGrid) -> Hyperdensity:
    """`hu` and `labels` on the model grid (runtime.preprocess, runtime.segment). Works at the skull
    strip's reduced in-plane grid (1 mm at the default grid): the foci sought are a millilitre and
    more, and the morphology costs a quarter."""
    mask = np.zeros(hu.shape, bool)
    levels = np.flatnonzero(is_region(labels).any(axis=(1, 2)))
    if levels.size == 0:
        return Hyperdensity(foci=(), metal=None, mask=mask)
    z = slice(int(levels[0]), int(levels[-1]) + 1)
    f = working_factor(hu.shape)
    spacing = grid.spacing[0] * f
    voxel_ml = grid.voxel_ml * f * f
    small = block_mean(hu[z], f)                        # the mirror of a block is a block: the width is even
    labels_z = labels[z, f // 2::f, f // 2::f][:, :small.shape[1], :small.shape[2]]
    brain = ndimage.binary_fill_holes(labels_z > 0, structure=_disk(1.0, 1.0))   # per slice: ventricles are inside
    metal = brain & (small >= METAL_HU)
    found = None
    if metal.any():
        near = ndimage.binary_dilation(metal, structure=_disk(STREAK_MM, spacing))
        found = Metal(volume_ml=round(float(metal.sum()) * voxel_ml, 2), regions_near=_regions_reached(labels_z[near]))

    smooth = ndimage.gaussian_filter(small, (0, SMOOTH_MM / spacing, SMOOTH_MM / spacing), truncate=GAUSS_TRUNCATE)
    above = smooth - smooth[:, :, ::-1]
    lo, hi = BLOOD_HU
    candidate = brain & (smooth >= lo) & (smooth <= hi) & (above >= ABOVE_MIRROR_HU)
    if candidate.sum() * voxel_ml < FOCUS_ML:      # what follows only takes voxels away: most heads stop here
        return Hyperdensity(foci=(), metal=found, mask=mask)
    inner = ndimage.binary_erosion(brain, structure=_disk(EDGE_MM, spacing))
    candidate &= inner & inner[:, :, ::-1]       # and its mirror is brain too, not air or bone beyond a tilted edge
    candidate &= ~ndimage.binary_dilation(small >= CALCIFIED_HU, structure=_disk(CALCIFIED_MARGIN_MM, spacing))
    candidate = ndimage.binary_opening(candidate, structure=_disk(OPENING_MM, spacing))
    pieces, n = ndimage.label(candidate)
    sizes = ndimage.sum_labels(np.ones(pieces.shape), pieces, np.arange(1, n + 1)) * voxel_ml
    foci = []
    centre_x = (small.shape[2] - 1) / 2
    for k in np.argsort(sizes)[::-1]:
        if sizes[k] < FOCUS_ML:
            break
        piece = pieces == k + 1
        full = piece.repeat(f, axis=1).repeat(f, axis=2)
        mask[z, :full.shape[1], :full.shape[2]] |= full
        zs = np.flatnonzero(piece.any(axis=(1, 2)))
        x = float(np.argwhere(piece)[:, 2].mean())
        foci.append(HyperdenseFocus(
            side="left" if x > centre_x else "right", volume_ml=round(float(sizes[k]), 2),
            mean_hu=round(float(small[piece].mean()), 1), above_mirror_hu=round(float(above[piece].mean()), 1),
            regions=_regions_reached(labels_z[piece]), slices=(int(zs[0]) + z.start, int(zs[-1]) + z.start)))
    return Hyperdensity(foci=tuple(foci), metal=found, mask=mask)


def look_first(found: Hyperdensity) -> list[str]:
    """The lines the console and report.json carry, first of all: each says the score may not hold."""
    lines = [_focus_line(f) for f in found.foci]
    if found.metal is not None:
        near = ", ".join(found.metal.regions_near) or "no ASPECTS region"
        lines.append(f"metal inside the skull (a clip or coil?), {found.metal.volume_ml:.2f} mL, within "
                     f"{STREAK_MM:.0f} mm of {near}: its streaks darken and brighten the tissue around it, so "
                     "calls there may be wrong either way: check them on the images")
    return lines


def _focus_line(focus: HyperdenseFocus) -> str:
    where = f"the {focus.side} hemisphere" + (f" ({', '.join(focus.regions)})" if focus.regions else "")
    return (f"hyperdense tissue in {where}: {focus.volume_ml:.1f} mL at {focus.mean_hu:.0f} HU, "
            f"{focus.above_mirror_hu:.0f} HU above its mirror; a haemorrhage, calcification or contrast? "
            "ASPECTS counts early ischaemic change only: look at the images before using this score")


def _regions_reached(labels: np.ndarray) -> tuple[str, ...]:
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=LEFT_FIRST_LABEL + len(REGION_NAMES))
    named = []
    for label in np.argsort(counts)[::-1]:
        if counts[label] < TOUCH_SHARE * labels.size or not is_region(label):
            continue
        side = "left" if label >= LEFT_FIRST_LABEL else "right"
        first = LEFT_FIRST_LABEL if side == "left" else RIGHT_FIRST_LABEL
        named.append(f"{side} {REGION_NAMES[int(label) - first]}")
    return tuple(named)


def _disk(radius_mm: float, spacing_mm: float) -> np.ndarray:
    """An in-plane disk (1, n, n) of the radius, at least one voxel."""
    r = max(1, int(round(radius_mm / spacing_mm)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx <= r * r)[None]
