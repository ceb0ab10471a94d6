"""Read one head CT study: a DICOM series folder, NIfTI, MHA or NRRD.

Output is a `Study`: HU voxels as float32 (z, y, x) plus the exact 4x4 that maps
voxel index (i, j, k) to patient LPS millimetres. Keeping the geometry as one
affine lets gantry tilt (a sheared grid) be carried to the resampler instead
of being silently squashed into an orthogonal image.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import AbsurdSize, InconsistentSeries, NoSeries, NotAHead, TooFewSlices, UnreadableInput, WrongModality

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
MIN_SLICES = 8
MIN_Z_COVERAGE_MM = 40.0
MAX_INPLANE_VOXELS = 2048
MAX_SLICES = 2000
INPLANE_SPACING_MM = (0.1, 3.0)
SLICE_SPACING_MM = (0.2, 12.0)
MAX_GANTRY_TILT_DEG = 30.0


@dataclass(frozen=True)
class Study:
    hu: np.ndarray                 # float32, (z, y, x), Hounsfield units
    affine: np.ndarray             # 4x4, voxel index (i, j, k) -> patient LPS mm
    source: str
    metadata: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (x, y, z) in mm; z is the slice spacing along the stack."""
        sx, sy, sz = (float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        return sx, sy, sz


def read_study(path: str | os.PathLike) -> Study:
    """Read and validate a study; raises an AspectsError subclass on bad input."""
    p = Path(path)
    if not p.exists():
        raise UnreadableInput(f"{p}: no such file or folder")
    if p.is_dir():
        study = _read_dicom_folder(p)
    elif p.name.lower().endswith(VOLUME_SUFFIXES):
        study = _read_volume_file(p)
    else:
        # A single DICOM file, or a volume with an unusual name.
        study = _read_volume_file(p)
    validate_study(study)
    return study


def _read_volume_file(p: Path) -> Study:
    _check_complete(p)
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise UnreadableInput(f"{p}: cannot read image ({_first_line(exc)})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise UnreadableInput(f"{p}: expected a 3-D scalar volume, got {image.GetDimension()}-D "
                              f"with {image.GetNumberOfComponentsPerPixel()} component(s)")
    meta = {k: image.GetMetaData(k).strip() for k in ("0008|0060", "0008|103e") if image.HasMetaDataKey(k)}
    modality = meta.get("0008|0060", "")
    if modality and modality.upper() != "CT":
        raise WrongModality(f"{p}: modality is {modality}, this runtime scores CT only")
    _check_dims(image.GetSize(), p)
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    return Study(hu=hu, affine=_sitk_affine(image), source=str(p),
                 metadata={"format": p.suffix.lstrip(".") or "dicom", "modality": modality or "unknown"})


def _check_complete(p: Path) -> None:
    """ITK zero-fills a truncated gzip or raw file without complaint; a cut-off study must not be scored."""
    if p.name.lower().endswith(".gz"):
        try:
            with gzip.open(p, "rb") as f:
                while f.read(1 << 22):
                    pass
        except (OSError, EOFError, zlib.error) as exc:
            raise UnreadableInput(f"{p}: file is truncated or corrupt ({exc})") from None
    elif p.name.lower().endswith(".nii"):
        with open(p, "rb") as f:
            header = f.read(352)
        if len(header) < 348:
            raise UnreadableInput(f"{p}: file is too short to be NIfTI")
        dims = np.frombuffer(header[40:56], "<i2")
        bitpix = int(np.frombuffer(header[72:74], "<i2")[0])
        offset = float(np.frombuffer(header[108:112], "<f4")[0])
        if 0 < dims[0] < 8 and bitpix > 0:
            need = int(offset) + int(np.prod(dims[1:1 + dims[0]].astype(np.int64))) * bitpix // 8
            if p.stat().st_size < need:
                raise UnreadableInput(f"{p}: file is truncated ({p.stat().st_size} of {need} bytes)")


def _sitk_affine(image: sitk.Image) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    a[:3, 3] = image.GetOrigin()
    return a


def _check_dims(size, where) -> None:
    nx, ny, nz = size
    if min(nx, ny) < 32 or max(nx, ny) > MAX_INPLANE_VOXELS or nz > MAX_SLICES:
        raise AbsurdSize(f"{where}: volume of {nx}x{ny}x{nz} voxels is not a head CT size")


# ---------------------------------------------------------------- DICOM

@dataclass(frozen=True)
class _SliceHeader:
    path: str
    series_uid: str
    modality: str
    description: str
    image_type: str
    rows: int
    cols: int
    position: np.ndarray       # (0020,0032), LPS mm
    row_dir: np.ndarray        # direction of increasing column index
    col_dir: np.ndarray        # direction of increasing row index
    pixel_spacing: tuple[float, float]   # (row spacing, column spacing)
    gantry_tilt: float


def _read_header(path: str) -> _SliceHeader | None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None

    def tag(key: str, default: str = "") -> str:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else default

    try:
        orient = [float(v) for v in tag("0020|0037").split("\\")]
        position = np.array([float(v) for v in tag("0020|0032").split("\\")])
        spacing = tuple(float(v) for v in tag("0028|0030").split("\\"))
        rows, cols = int(tag("0028|0010")), int(tag("0028|0011"))
    except ValueError:
        return None
    if len(orient) != 6 or position.shape != (3,) or len(spacing) != 2:
        return None
    return _SliceHeader(path=path, series_uid=tag("0020|000e", "unknown"),
                        modality=tag("0008|0060").upper(), description=tag("0008|103e"),
                        image_type=tag("0008|0008").upper(), rows=rows, cols=cols,
                        position=position, row_dir=np.array(orient[:3]), col_dir=np.array(orient[3:]),
                        pixel_spacing=spacing, gantry_tilt=float(tag("0018|1120", "0") or 0))


def _read_dicom_folder(folder: Path) -> Study:
    files = sorted(str(f) for f in folder.rglob("*") if f.is_file())
    if not files:
        raise NoSeries(f"{folder}: folder is empty")
    headers = [h for h in map(_read_header, files) if h is not None]
    if not headers:
        raise NoSeries(f"{folder}: no readable DICOM image series in {len(files)} file(s)")
    series: dict[str, list[_SliceHeader]] = {}
    for h in headers:
        series.setdefault(h.series_uid, []).append(h)
    chosen = _choose_series(series, folder)
    return _stack_series(chosen, folder, n_series=len(series), n_unreadable=len(files) - len(headers))


def _choose_series(series: dict[str, list[_SliceHeader]], folder: Path) -> list[_SliceHeader]:
    """Pick the axial NCCT head series: CT, not a localizer, axial, soft-tissue, most slices."""
    ct = {u: s for u, s in series.items() if s[0].modality == "CT"}
    if not ct:
        found = sorted({s[0].modality or "unknown" for s in series.values()})
        raise WrongModality(f"{folder}: no CT series (found modality {', '.join(found)})")

    def rank(item):
        uid, slices = item
        h = slices[0]
        normal = np.cross(h.row_dir, h.col_dir)
        axial = abs(normal[2]) > 0.8
        localizer = "LOCALIZER" in h.image_type or len(slices) < 3
        text = f"{h.description} {h.image_type}".upper()
        bone_kernel = any(w in text for w in ("BONE", "LUNG", "MIP"))
        return (not localizer, axial, not bone_kernel, len(slices))

    uid, slices = max(ct.items(), key=rank)
    if not rank((uid, slices))[1]:
        raise InconsistentSeries(f"{folder}: no axial CT series; found only non-axial reconstructions")
    return slices


def _stack_series(slices: list[_SliceHeader], folder: Path, n_series: int, n_unreadable: int) -> Study:
    first = slices[0]
    if any((h.rows, h.cols) != (first.rows, first.cols) for h in slices):
        raise InconsistentSeries(f"{folder}: slices of different sizes in one series")
    if any(not np.allclose(h.row_dir, first.row_dir, atol=1e-3) or not np.allclose(h.col_dir, first.col_dir, atol=1e-3)
           for h in slices):
        raise InconsistentSeries(f"{folder}: slices with different orientations in one series")
    _check_dims((first.cols, first.rows, len(slices)), folder)
    normal = np.cross(first.row_dir, first.col_dir)
    slices = sorted(slices, key=lambda h: float(h.position @ normal))
    along = np.array([h.position @ normal for h in slices])
    steps = np.diff(along)
    if len(slices) < MIN_SLICES:
        raise TooFewSlices(f"{folder}: {len(slices)} slices; at least {MIN_SLICES} are needed")
    if np.any(steps < 1e-3):
        raise InconsistentSeries(f"{folder}: two or more slices share one position (duplicated or mixed series)")
    step = float(np.median(steps))
    if np.any(steps > 1.5 * step):
        k = int(np.argmax(steps))
        raise InconsistentSeries(f"{folder}: slices missing between z={along[k]:.1f} mm and z={along[k + 1]:.1f} mm "
                                 f"(gap {steps[k]:.1f} mm, slice spacing {step:.1f} mm)")

    warnings = []
    pixels = []
    for h in slices:
        try:
            img = sitk.ReadImage(h.path, imageIO="GDCMImageIO")   # applies rescale slope / intercept
        except RuntimeError as exc:
            raise UnreadableInput(f"{h.path}: cannot decode pixel data ({_first_line(exc)})") from None
        pixels.append(sitk.GetArrayFromImage(img).reshape(first.rows, first.cols).astype(np.float32))
    hu = np.stack(pixels)

    # Index -> LPS: columns along row_dir, rows along col_dir, slices along the mean slice step vector.
    # The slice step is taken from the positions themselves, so a tilted gantry gives a sheared affine.
    row_sp, col_sp = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = first.row_dir * col_sp
    affine[:3, 1] = first.col_dir * row_sp
    positions = np.array([h.position for h in slices])
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(slices) - 1)
    affine[:3, 3] = positions[0]
    if np.abs(steps - step).max() > 0.1 * step:
        hu, affine = _regrid_uneven(hu, affine, along - along[0], step)
        warnings.append(f"uneven slice spacing ({steps.min():.2f}-{steps.max():.2f} mm) resampled to {step:.2f} mm")
    tilt = _tilt_degrees(affine)
    if tilt > MAX_GANTRY_TILT_DEG:
        raise InconsistentSeries(f"{folder}: gantry tilt of {tilt:.1f} degrees is beyond {MAX_GANTRY_TILT_DEG:.0f}")
    if tilt > 0.5:
        warnings.append(f"gantry tilt of {tilt:.1f} degrees corrected by resampling the sheared grid")
    if n_series > 1:
        warnings.append(f"folder holds {n_series} series; scored '{first.description or first.series_uid}'")
    if n_unreadable:
        warnings.append(f"{n_unreadable} file(s) in the folder are not DICOM images and were ignored")
    return Study(hu=hu, affine=affine, source=str(folder), warnings=tuple(warnings),
                 metadata={"format": "dicom", "modality": "CT", "series_uid": first.series_uid,
                           "series_description": first.description, "slices": len(slices),
                           "gantry_tilt_deg": round(tilt, 2)})


def _regrid_uneven(hu: np.ndarray, affine: np.ndarray, along: np.ndarray, step: float):
    """Linear interpolation of unevenly spaced slices onto a uniform stack."""
    n = int(round(along[-1] / step)) + 1
    target = np.arange(n) * step
    upper = np.clip(np.searchsorted(along, target, side="right"), 1, len(along) - 1)
    lo = upper - 1
    w = ((target - along[lo]) / (along[upper] - along[lo])).astype(np.float32)[:, None, None]
    out = (1 - w) * hu[lo] + w * hu[upper]
    affine = affine.copy()
    affine[:3, 2] *= step / (along[-1] / (len(along) - 1))   # mean step vector rescaled to the new step
    return out.astype(np.float32), affine


def _tilt_degrees(affine: np.ndarray) -> float:
    """Angle between the slice stacking direction and the slice normal."""
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    stack = affine[:3, 2]
    cos = abs(normal @ stack) / (np.linalg.norm(normal) * np.linalg.norm(stack))
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))))


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1][:160] if lines else type(exc).__name__


# ---------------------------------------------------------------- validation

def validate_study(study: Study) -> None:
    """Refuse volumes that are not a scoreable head CT, before any compute is spent."""
    sx, sy, sz = study.spacing
    nz, ny, nx = study.hu.shape
    if not (INPLANE_SPACING_MM[0] <= min(sx, sy) and max(sx, sy) <= INPLANE_SPACING_MM[1]):
        raise AbsurdSize(f"{study.source}: in-plane voxel size {sx:.3g}x{sy:.3g} mm is not a head CT's")
    if not SLICE_SPACING_MM[0] <= sz <= SLICE_SPACING_MM[1]:
        raise AbsurdSize(f"{study.source}: slice spacing {sz:.3g} mm is not a head CT's")
    _check_dims((nx, ny, nz), study.source)
    if nz < MIN_SLICES or nz * sz < MIN_Z_COVERAGE_MM:
        raise TooFewSlices(f"{study.source}: {nz} slices covering {nz * sz:.0f} mm; need at least "
                           f"{MIN_SLICES} slices and {MIN_Z_COVERAGE_MM:.0f} mm of head")
    hu = study.hu
    if not np.isfinite(hu).all():
        raise UnreadableInput(f"{study.source}: volume contains NaN or infinite values")
    lo, hi = float(hu.min()), float(hu.max())
    if hi - lo < 100:
        raise NotAHead(f"{study.source}: volume is empty or flat (values {lo:.0f}..{hi:.0f})")
    if lo < -3000 or hi > 40000:
        raise NotAHead(f"{study.source}: values {lo:.0f}..{hi:.0f} are not Hounsfield units")
    voxel_ml = sx * sy * sz / 1000.0
    bone_ml = float((hu > 300).sum()) * voxel_ml
    brainlike_ml = float(((hu > 15) & (hu < 60)).sum()) * voxel_ml
    if bone_ml < 5:
        raise NotAHead(f"{study.source}: no skull found ({bone_ml:.1f} mL above 300 HU); is this a head CT?")
    if brainlike_ml < 150:
        raise NotAHead(f"{study.source}: too little brain-density tissue ({brainlike_ml:.0f} mL); is this a head CT?")
    width_mm = _bone_width_mm(hu, sx)
    if width_mm > 230:
        raise NotAHead(f"{study.source}: bony anatomy {width_mm:.0f} mm wide is a body, not a head")


def _bone_width_mm(hu: np.ndarray, sx: float) -> float:
    """Median left-right extent of bone per slice: skulls are ~130-170 mm, chests and pelves 250+.

    Bone, not soft tissue, so the head holder and table do not count.
    """
    cols = np.asarray((hu > 300).any(axis=1))       # (z, x)
    widths = [(idx[-1] - idx[0] + 1) * sx for idx in (np.flatnonzero(cols[z]) for z in range(cols.shape[0]))
              if idx.size > 1]
    return float(np.median(widths)) if widths else 0.0
