"""The study every reader returns, the limits of a scoreable head CT, and the check against them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import AbsurdSize, InconsistentSeries, NotAHead, TooFewSlices, UnreadableInput

MIN_SLICES = 8
MIN_Z_COVERAGE_MM = 40.0
# Less than this along the head is part of one: the posterior fossa alone (40-60 mm), a limited rescan.
# Whole heads measure 120-160 mm, a cerebrum-only series of a two-part protocol 90-110 mm.
PARTIAL_COVERAGE_MM = 75.0
MAX_INPLANE_VOXELS = 2048
MAX_SLICES = 2000
INPLANE_SPACING_MM = (0.1, 3.0)
SLICE_SPACING_MM = (0.2, 12.0)
MAX_GANTRY_TILT_DEG = 30.0
COUNT_SLICES = 16                # slices whose tissue masks are made at once
UNRESCALED_BRAIN_ML = 400.0      # head CTs measured 1-26 mL at 1015-1060 HU; unrescaled ones 1800-6200


@dataclass(frozen=True)
class Study:
    hu: np.ndarray                 # float32, (z, y, x), Hounsfield units
    affine: np.ndarray             # 4x4, voxel index (i, j, k) -> patient LPS mm
    source: str
    metadata: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # DICOM input: the header (no pixels) of every source image in stack order, for outputs that
    # reference and overlay them (runtime.dicom_out). Empty for volume files and Enhanced CT.
    source_images: tuple = field(default=(), repr=False, compare=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (x, y, z) in mm; z is the distance between slice planes. With gantry tilt the
        slice-to-slice vector is longer than that (5.11 mm for 5 mm slices at 12 degrees): the
        planes, not the vector, set the slice thickness the model grid keeps."""
        a = self.affine[:3, :3]
        sx, sy = (float(v) for v in np.linalg.norm(a[:, :2], axis=0))
        normal = np.cross(a[:, 0], a[:, 1])
        norm = float(np.linalg.norm(normal))
        sz = abs(float(a[:, 2] @ normal)) / norm if norm > 0 else 0.0
        return sx, sy, sz


def check_dims(size, where) -> None:
    nx, ny, nz = size
    if min(nx, ny) < 32 or max(nx, ny) > MAX_INPLANE_VOXELS or nz > MAX_SLICES:
        raise AbsurdSize(f"{where}: volume of {nx}x{ny}x{nz} voxels is not a head CT size")


def first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1][:160] if lines else type(exc).__name__


def validate_study(study: Study) -> None:
    """Refuse volumes that are not a scoreable head CT, before any compute is spent."""
    sx, sy, sz = study.spacing
    nz, ny, nx = study.hu.shape
    if _reformat(sx, sy, sz):
        raise InconsistentSeries(f"{study.source}: not an axial series ({sx:.3g} x {sy:.3g} mm voxels across the "
                                 f"head-to-foot axis, {sz:.3g} mm along it): a coronal or sagittal reconstruction; "
                                 "score the axial series")
    if not (INPLANE_SPACING_MM[0] <= min(sx, sy) and max(sx, sy) <= INPLANE_SPACING_MM[1]):
        raise AbsurdSize(f"{study.source}: in-plane voxel size {sx:.3g}x{sy:.3g} mm is not a head CT's")
    if not SLICE_SPACING_MM[0] <= sz <= SLICE_SPACING_MM[1]:
        raise AbsurdSize(f"{study.source}: slice spacing {sz:.3g} mm is not a head CT's")
    check_dims((nx, ny, nz), study.source)
    if nz < MIN_SLICES or nz * sz < MIN_Z_COVERAGE_MM:
        raise TooFewSlices(f"{study.source}: {nz} slices covering {nz * sz:.0f} mm; need at least "
                           f"{MIN_SLICES} slices and {MIN_Z_COVERAGE_MM:.0f} mm of head")
    hu = study.hu
    lo, hi = float(hu.min()), float(hu.max())      # NaN carries into both, an infinity into one
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise UnreadableInput(f"{study.source}: volume contains NaN or infinite values")
    if hi - lo < 100:
        raise NotAHead(f"{study.source}: volume is empty or flat (values {lo:.0f}..{hi:.0f})")
    if lo < -3000 or hi > 40000:
        raise NotAHead(f"{study.source}: values {lo:.0f}..{hi:.0f} are not Hounsfield units")
    voxel_ml = sx * sy * sz / 1000.0
    # Brain read without its rescale (intercept -1024 dropped by an export or a converter) sits at
    # 1040-1060; a head CT has 1-30 mL there (the edge of its bone). Refused before it is taken for a
    # turned or absent head.
    unrescaled, bone, brainlike, bone_columns = _tissue_counts(hu)
    unrescaled_ml = unrescaled * voxel_ml
    if unrescaled_ml > UNRESCALED_BRAIN_ML:
        raise UnreadableInput(f"{study.source}: {unrescaled_ml:.0f} mL at 1015-1060, where brain sits when 1024 is "
                              "not subtracted: the CT numbers look stored without their rescale "
                              "(RescaleIntercept missing, or dropped by a converter)")
    bone_ml = bone * voxel_ml
    brainlike_ml = brainlike * voxel_ml
    if bone_ml < 5:
        raise NotAHead(f"{study.source}: no skull found ({bone_ml:.1f} mL above 300 HU); is this a head CT?")
    if brainlike_ml < 150:
        raise NotAHead(f"{study.source}: too little brain-density tissue ({brainlike_ml:.0f} mL); is this a head CT?")
    width_mm = _bone_width_mm(bone_columns, sx)
    if width_mm > 230:
        raise NotAHead(f"{study.source}: bony anatomy {width_mm:.0f} mm wide is a body, not a head")


def coverage_warnings(study: Study) -> tuple[str, ...]:
    """A partial scan is scored, not refused: the regions it does not reach widen the score's range
    (runtime.score), and this says why they were not found."""
    sz = study.spacing[2]
    covered = study.hu.shape[0] * sz
    if covered >= PARTIAL_COVERAGE_MM:
        return ()
    return (f"the series covers {covered:.0f} mm from foot to head, where a head CT covers 120 mm or more: "
            "regions outside it cannot be assessed; score a series that covers the whole head where there is one",)


def _reformat(sx: float, sy: float, sz: float) -> bool:
    """Thick slices standing on end: one axis across the head-to-foot axis is coarser than a CT
    pixel, the other and the head-to-foot axis are pixel-sized (a coronal or sagittal MPR)."""
    lo, hi = INPLANE_SPACING_MM
    return max(sx, sy) > hi and lo <= min(sx, sy) <= hi and lo <= sz <= hi


def _tissue_counts(hu: np.ndarray) -> tuple[int, int, int, np.ndarray]:
    """Voxels at 1015-1060 HU (unrescaled brain), above 300 (bone) and at 15-60 (brain), and which
    (slice, column) hold bone. Counted a few slices at a time: a whole thin study's masks took
    three-quarters of its own size again (340 MB for 216 slices) and twice the time."""
    unrescaled = bone = brainlike = 0
    bone_columns = np.zeros((hu.shape[0], hu.shape[2]), bool)
    for z in range(0, hu.shape[0], COUNT_SLICES):
        part = hu[z:z + COUNT_SLICES]
        unrescaled += int(np.count_nonzero((part > 1015) & (part < 1060)))
        part_bone = part > 300
        bone += int(np.count_nonzero(part_bone))
        brainlike += int(np.count_nonzero((part > 15) & (part < 60)))
        bone_columns[z:z + COUNT_SLICES] = part_bone.any(axis=1)
    return unrescaled, bone, brainlike, bone_columns


def _bone_width_mm(cols: np.ndarray, sx: float) -> float:
    """Median left-right extent of bone per slice, from which (slice, column) hold bone: skulls are
    ~130-170 mm, chests and pelves 250+. Bone, not soft tissue, so the head holder and table do not
    count.
    """
    widths = [(idx[-1] - idx[0] + 1) * sx for idx in (np.flatnonzero(cols[z]) for z in range(cols.shape[0]))
              if idx.size > 1]
    return float(np.median(widths)) if widths else 0.0
