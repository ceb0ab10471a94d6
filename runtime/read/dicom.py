"""A DICOM series: a folder (or a zip of one) of classic or enhanced CT images, one series chosen,
stacked into one volume with its exact geometry (gantry tilt, uneven spacing)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import (
    AbsurdSize,
    AspectsError,
    InconsistentSeries,
    NoSeries,
    TooFewSlices,
    UnreadableInput,
    WrongModality,
)
from .study import MAX_GANTRY_TILT_DEG, MIN_SLICES, Study, check_dims, first_line
from .volume import VOLUME_SUFFIXES

# Pixel values scanners store outside the scan circle: not Hounsfield units, and no reason to refuse.
PADDING_BELOW_HU = -1024.0
LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                  "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"}
CT_IMAGE_SOPS = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}
# ASPECTS is read on a non-contrast CT. A stroke protocol sends NCCT, CTA and perfusion as one study;
# the contrast series are the larger ones. The Contrast/Bolus modules are present only when contrast was
# given, but some scanners write an empty or "none" agent on every series: those values mean no contrast.
NO_AGENT = {"", "NONE", "NO", "N", "NA", "N/A", "NIL", "0", "NO CONTRAST", "NON CONTRAST", "NONCONTRAST",
            "WITHOUT CONTRAST", "W/O", "W/O CONTRAST", "NOT APPLIED", "NOT USED"}
CONTRAST_WORDS = re.compile(r"(?<![A-Z0-9])(CTA|CTP|CTV|ANGIO\w*|PERF\w*|C\+|POST ?CONTRAST|W/ ?CONTRAST|"
                            r"WITH CONTRAST|ARTERIAL|VENOUS)(?![A-Z0-9])")
ZIP_MAX_BYTES = 4 << 30
ZIP_MAX_FILES = 20000


@dataclass(frozen=True)
class _Slice:
    """One image plane: a classic CT file, or one frame of an enhanced multi-frame file."""
    path: str
    frame: int | None
    identity: tuple[tuple[str, str], ...]     # patient / study / series identity (see IDENTITY_TAGS)
    sop_uid: str
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
    slope: float
    intercept: float
    padding: float | None      # PixelPaddingValue, as stored
    lossy: bool
    contrast_agent: str        # the contrast the image says was given; "" when none
    header: object = field(repr=False, compare=False, default=None)   # the pydicom header, no pixels

    @property
    def series_uid(self) -> str:
        return dict(self.identity).get("SeriesInstanceUID", "unknown")


IDENTITY_TAGS = ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber",
                 "FrameOfReferenceUID", "StudyDate", "SeriesNumber")


@dataclass(frozen=True)
class _Refused:
    """A file that is a DICOM image but cannot be used, and why."""
    path: str
    series_uid: str | None
    reason: str


def _read_headers(path: str) -> list[_Slice] | _Refused | None:
    """The planes of one file; None when it is not a DICOM image at all (a README, a DICOMDIR, an SR)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return _Refused(path, None, "damaged DICOM file") if is_dicom_file(path) else None
    except Exception as exc:  # pydicom raises many types on a cut-off or corrupt file
        if is_dicom_file(path):
            return _Refused(path, None, f"damaged DICOM file ({type(exc).__name__})")
        return None
    series_uid = str(ds.get("SeriesInstanceUID", "")) or None
    if "Rows" not in ds or "Columns" not in ds:
        if str(ds.get("SOPClassUID", "")) in CT_IMAGE_SOPS:
            return _Refused(path, series_uid, "damaged DICOM file (a CT image with no Rows/Columns: cut off?)")
        return None                          # not an image: DICOMDIR, SR, presentation state...
    if str(ds.get("SamplesPerPixel", 1)) != "1":
        return _Refused(path, series_uid, f"a colour image ({ds.get('PhotometricInterpretation', '?')}), "
                                          "not CT densities")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            return _enhanced_planes(path, ds, frames)
        missing = [name for name, tag in (("ImagePositionPatient", "0020,0032"),
                                          ("ImageOrientationPatient", "0020,0037"),
                                          ("PixelSpacing", "0028,0030")) if name not in ds]
        if missing:
            return _Refused(path, series_uid, "missing " + ", ".join(missing))
        return [_plane(path, None, ds, ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing,
                       float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))]
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        return _Refused(path, series_uid, f"unreadable geometry ({exc})")


def is_dicom_file(path: str | Path) -> bool:
    """The DICOM file-format marker, whatever the file's name."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _plane(path, frame, ds, position, orientation, spacing, slope, intercept) -> _Slice:
    orient = [float(v) for v in orientation]
    pos = np.array([float(v) for v in position])
    sp = tuple(float(v) for v in spacing)
    if len(orient) != 6 or pos.shape != (3,) or len(sp) != 2:
        raise ValueError("ImagePositionPatient, ImageOrientationPatient or PixelSpacing malformed")
    if not np.isfinite([*orient, *pos, *sp]).all():
        raise ValueError("ImagePositionPatient, ImageOrientationPatient or PixelSpacing not a finite number")
    if min(sp) <= 0:
        # A negative pixel size mirrors the image: a left stroke would be reported on the right.
        raise ValueError(f"PixelSpacing {list(sp)} is not two positive sizes")
    row, col = np.array(orient[:3]), np.array(orient[3:])
    # Direction cosines are unit and orthogonal by definition; anything else would scale or shear the
    # head silently (a 2 instead of a 1 doubles its width).
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01 or abs(row @ col) > 0.01:
        raise ValueError(f"ImageOrientationPatient {orient} is not two orthogonal unit vectors")
    lossy = str(ds.get("LossyImageCompression", "00")) == "01" or \
        str(getattr(ds.file_meta, "TransferSyntaxUID", "")) in LOSSY_SYNTAXES
    padding = ds.get("PixelPaddingValue")
    return _Slice(path=path, frame=frame,
                  identity=tuple((t, str(ds.get(t, "") or "")) for t in IDENTITY_TAGS),
                  sop_uid=str(ds.get("SOPInstanceUID", "")), modality=str(ds.get("Modality", "")).upper(),
                  description=str(ds.get("SeriesDescription", "")),
                  image_type="\\".join(ds.get("ImageType", [])).upper() if ds.get("ImageType") else "",
                  rows=int(ds.Rows), cols=int(ds.Columns), position=pos,
                  row_dir=np.array(orient[:3]), col_dir=np.array(orient[3:]), pixel_spacing=(sp[0], sp[1]),
                  gantry_tilt=float(ds.get("GantryDetectorTilt", 0) or 0), slope=slope, intercept=intercept,
                  padding=None if padding is None else float(padding), lossy=lossy,
                  contrast_agent=_contrast_agent(ds), header=ds)


def _contrast_agent(ds) -> str:
    """Classic CT names the agent in ContrastBolusAgent, enhanced CT in ContrastBolusAgentSequence."""
    given = [str(ds.get("ContrastBolusAgent", "") or "")]
    given += [str(item.get("CodeMeaning", "") or "a coded agent") for item in ds.get("ContrastBolusAgentSequence", [])]
    return ", ".join(g.strip() for g in given
                     if " ".join(g.upper().replace("-", " ").replace("_", " ").split()) not in NO_AGENT)


def _enhanced_planes(path: str, ds, frames: int) -> list[_Slice]:
    """Enhanced CT: geometry and rescale per frame, from the per-frame or the shared functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    if len(per_frame) != frames:
        raise ValueError(f"{frames} frames but {len(per_frame)} per-frame functional groups")

    def item(group, seq: str):
        for source in (group, shared):
            if source is not None and seq in source:
                return source[seq][0]
        raise ValueError(f"no {seq} for a frame")

    planes = []
    for i, group in enumerate(per_frame):
        transform = None
        for source in (group, shared):
            if source is not None and "PixelValueTransformationSequence" in source:
                transform = source.PixelValueTransformationSequence[0]
                break
        slope = float(getattr(transform, "RescaleSlope", 1) or 1) if transform else float(ds.get("RescaleSlope", 1))
        intercept = float(getattr(transform, "RescaleIntercept", 0) or 0) if transform else \
            float(ds.get("RescaleIntercept", 0))
        plane = _plane(path, i, ds, item(group, "PlanePositionSequence").ImagePositionPatient,
                       item(group, "PlaneOrientationSequence").ImageOrientationPatient,
                       item(group, "PixelMeasuresSequence").PixelSpacing, slope, intercept)
        if plane.contrast_agent and not _contrast_in_frame(group, shared):
            plane = replace(plane, contrast_agent="")
        planes.append(plane)
    return planes


def _contrast_in_frame(group, shared) -> bool:
    """An enhanced CT names its agents once; each frame says whether it was given yet (a pre-contrast
    frame of a contrast exam says NO). Without that record every frame counts as given."""
    for source in (group, shared):
        if source is not None and "ContrastBolusUsageSequence" in source:
            return any(str(u.get("ContrastBolusAgentAdministered", "YES")).upper() != "NO" and
                       str(u.get("ContrastBolusAgentPhase", "")).upper() != "PRE_CONTRAST"
                       for u in source.ContrastBolusUsageSequence)
    return True


def read_dicom_folder(folder: Path) -> Study:
    files = sorted(str(f) for f in folder.rglob("*") if f.is_file())
    if not files:
        raise NoSeries(f"{folder}: folder is empty")
    return _read_files(files, folder)


def read_dicom_file(path: Path) -> Study:
    """One DICOM file (an enhanced CT holds a whole series): the same checks as a folder's series."""
    return _read_files([str(path)], path)


def _read_files(files: list[str], folder: Path) -> Study:
    planes: list[_Slice] = []
    refused: list[_Refused] = []
    ignored = 0
    for f in files:
        got = _read_headers(f)
        if got is None:
            ignored += 1
        elif isinstance(got, _Refused):
            refused.append(got)
        else:
            planes.extend(got)
    if not planes:
        if refused:
            raise NoSeries(f"{folder}: no usable DICOM image series; {refused[0].path}: {refused[0].reason}")
        volumes = [f for f in files if f.lower().endswith(VOLUME_SUFFIXES)]
        if volumes:
            raise NoSeries(f"{folder}: no DICOM series, but {len(volumes)} volume file(s) such as "
                           f"{Path(volumes[0]).name}: give the file itself, not its folder")
        raise NoSeries(f"{folder}: no readable DICOM image series in {len(files)} file(s)")
    planes, duplicates = _drop_copies(planes)
    series: dict[str, list[_Slice]] = {}
    for h in planes:
        series.setdefault(h.series_uid, []).append(h)
    chosen = _choose_series(series, folder)
    _refuse_mixed_patients(series, folder)
    # A file that belongs to the chosen series (or cannot say which series it belongs to) but cannot be
    # read is a missing slice, wherever it sits in the stack.
    broken = [r for r in refused if r.series_uid in (None, chosen[0].series_uid)]
    if broken:
        raise UnreadableInput(f"{broken[0].path}: {broken[0].reason}; a slice of the series cannot be read "
                              f"({len(broken)} such file(s))")
    study = _stack_series(chosen, folder, n_series=len(series), n_ignored=ignored)
    if duplicates:
        study = replace(study, warnings=(*study.warnings, f"{duplicates} image(s) in the folder twice (a copy with "
                                                          "the same SOPInstanceUID and position) read once"))
    return study


def _drop_copies(planes: list[_Slice]) -> tuple[list[_Slice], int]:
    """A file copied twice into a folder is one image, not a duplicated position. Only the UID and the
    position together say so: a careless anonymiser gives every slice of a series one SOPInstanceUID."""
    seen: set[tuple] = set()
    kept = []
    for h in planes:
        key = (h.sop_uid, h.frame, tuple(np.round(h.position, 2)))
        if h.sop_uid and key in seen:
            continue
        seen.add(key)
        kept.append(h)
    return kept, len(planes) - len(kept)


def _refuse_mixed_patients(series: dict[str, list[_Slice]], folder: Path) -> None:
    """One folder, one study: CT series of several patients or studies are never silently picked from.
    Each is named with the sub-folder that holds it, so that a CD's or PACS export's can be given."""
    studies: dict[tuple[str, str], list[_Slice]] = {}
    for slices in series.values():
        if slices[0].modality == "CT":
            ident = dict(slices[0].identity)
            studies.setdefault((ident.get("PatientID", ""), ident.get("StudyInstanceUID", "")), []).extend(slices)
    if len(studies) > 1:
        raise InconsistentSeries(f"{folder}: holds CT series of {len(studies)} studies "
                                 f"({'; '.join(_name_study(s, folder) for s in studies.values())}); "
                                 "give one study's folder")


def _name_study(slices: list[_Slice], folder: Path) -> str:
    i = dict(slices[0].identity)
    home = Path(os.path.commonpath([str(Path(h.path).parent) for h in slices]))
    where = "" if home == folder else f", in {home.relative_to(folder)}"
    return (f"patient {i.get('PatientID') or '?'} ({i.get('PatientName') or 'no name'}), study "
            f"{i.get('StudyInstanceUID') or '?'} of {i.get('StudyDate') or 'no date'}{where}")


def _choose_series(series: dict[str, list[_Slice]], folder: Path) -> list[_Slice]:
    """Pick the axial NCCT head series: CT, not a localizer, axial, one volume (not a perfusion series'
    time points), no contrast, soft-tissue, original, most slices."""
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
        one_volume = len({round(float(s.position @ normal), 2) for s in slices}) == len(slices)
        agent = any(s.contrast_agent for s in slices)
        text = f"{h.description} {h.image_type}".upper()
        bone_kernel = any(w in text for w in ("BONE", "LUNG", "MIP"))
        original = not h.image_type.startswith("DERIVED")
        return (not localizer, axial, one_volume, not agent, not CONTRAST_WORDS.search(h.description.upper()),
                not bone_kernel, original, len(slices))

    uid, slices = max(ct.items(), key=rank)
    if not rank((uid, slices))[1]:
        raise InconsistentSeries(f"{folder}: no axial CT series; found only non-axial reconstructions")
    agent = next((s.contrast_agent for s in slices if s.contrast_agent), "")
    if agent:
        raise WrongModality(f"{folder}: no non-contrast CT series; the axial CT series "
                            f"'{slices[0].description or uid}' was acquired with contrast "
                            f"(ContrastBolusAgent '{agent}'); ASPECTS is read on a non-contrast CT")
    return slices


def _gaps(steps: np.ndarray) -> np.ndarray:
    """Indices of steps that are missing slices: much larger than the steps on both sides. A series
    whose spacing changes in runs (4 mm through the posterior fossa, 7 mm above) has no gap."""
    out = []
    for k, s in enumerate(steps):
        neighbours = [steps[j] for j in (k - 1, k + 1) if 0 <= j < len(steps)]
        if neighbours and all(s > 1.5 * n for n in neighbours):
            out.append(k)
    return np.array(out, int)


def _stack_series(slices: list[_Slice], folder: Path, n_series: int, n_ignored: int) -> Study:
    first = slices[0]
    if any((h.rows, h.cols) != (first.rows, first.cols) for h in slices):
        raise InconsistentSeries(f"{folder}: slices of different sizes in one series")
    if any(not np.allclose(h.row_dir, first.row_dir, atol=1e-3) or not np.allclose(h.col_dir, first.col_dir, atol=1e-3)
           for h in slices):
        raise InconsistentSeries(f"{folder}: slices with different orientations in one series")
    if any(not np.allclose(h.pixel_spacing, first.pixel_spacing, rtol=1e-3) for h in slices):
        found = sorted({h.pixel_spacing for h in slices})
        raise InconsistentSeries(f"{folder}: slices with different pixel spacings in one series "
                                 f"({', '.join(f'{r:g} x {c:g} mm' for r, c in found)})")
    check_dims((first.cols, first.rows, len(slices)), folder)
    normal = np.cross(first.row_dir, first.col_dir)
    slices = sorted(slices, key=lambda h: float(h.position @ normal))
    along = np.array([h.position @ normal for h in slices])
    steps = np.diff(along)
    if len(slices) < MIN_SLICES:
        hint = "; this is one image of a series: give the folder that holds them all" \
            if folder.is_file() and len(slices) == 1 else ""
        raise TooFewSlices(f"{folder}: {len(slices)} slice(s); at least {MIN_SLICES} are needed{hint}")
    if np.any(steps < 1e-3):
        raise InconsistentSeries(f"{folder}: two or more slices share one position (duplicated or mixed series)")
    gaps = _gaps(steps)
    if len(gaps):
        k = int(gaps[0])
        raise InconsistentSeries(f"{folder}: slices missing between z={along[k]:.1f} mm and z={along[k + 1]:.1f} mm "
                                 f"(gap {steps[k]:.1f} mm, slice spacing around it "
                                 f"{np.median(np.delete(steps, gaps)):.1f} mm)")
    step = float(np.median(steps))

    warnings = []
    hu = _planes_hu(slices)

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
        step = _regrid_step(steps)
        hu, affine = _regrid_uneven(hu, affine, along - along[0], step)
        warnings.append(f"uneven slice spacing ({steps.min():.2f}-{steps.max():.2f} mm) resampled to {step:.2f} mm")
    tilt = _tilt_degrees(affine)
    if tilt > MAX_GANTRY_TILT_DEG:
        raise InconsistentSeries(f"{folder}: gantry tilt of {tilt:.1f} degrees is beyond {MAX_GANTRY_TILT_DEG:.0f}")
    if tilt > 0.5:
        warnings.append(f"gantry tilt of {tilt:.1f} degrees corrected by resampling the sheared grid")
    if any(h.lossy for h in slices):
        warnings.append("the series is lossy-compressed (LossyImageCompression 01 or a lossy transfer syntax): "
                        "subtle density differences may be altered; check the source images")
    if CONTRAST_WORDS.search(first.description.upper()):
        warnings.append(f"the series is described '{first.description}', which names a contrast study: ASPECTS "
                        "is read on a non-contrast CT; check that this series is one")
    if n_series > 1:
        number = dict(first.identity).get("SeriesNumber")
        warnings.append(f"folder holds {n_series} series; scored series {number + ' ' if number else ''}"
                        f"'{first.description or first.series_uid}'")
    if n_ignored:
        warnings.append(f"{n_ignored} file(s) in the folder are not DICOM images and were ignored")
    identity: dict[str, object] = dict(first.identity)
    identity["SOPInstanceUIDs"] = [h.sop_uid for h in slices]
    headers = () if any(h.frame is not None for h in slices) else tuple(h.header for h in slices)
    return Study(hu=hu, affine=affine, source=str(folder), warnings=tuple(warnings), source_images=headers,
                 metadata={"format": "dicom", "modality": "CT", "series_uid": first.series_uid,
                           "series_description": first.description, "slices": len(slices),
                           "gantry_tilt_deg": round(tilt, 2), "identity": identity,
                           "source_slice_positions_mm": [round(float(a - along[0]), 3) for a in along]})


def _regrid_step(steps: np.ndarray) -> float:
    """Spacing for an uneven series. Runs of equal steps (a sequential protocol: 4 mm, then 7 mm)
    keep their finest run's step; irregular jitter keeps the median."""
    runs = [s for k, s in enumerate(steps)
            if any(abs(s - steps[j]) < 0.02 * s for j in (k - 1, k + 1) if 0 <= j < len(steps))]
    return float(min(runs)) if runs else float(np.median(steps))


def _planes_hu(slices: list[_Slice]) -> np.ndarray:
    """The slices' planes in HU, in the order given; a multi-frame file is decoded once for all its frames."""
    frames: dict[str, np.ndarray] = {}
    for h in slices:
        if h.path not in frames:
            frames[h.path] = _stored_values(h)
    return np.stack([_to_hu(frames[h.path][h.frame or 0], h) for h in slices])


def _stored_values(h: _Slice) -> np.ndarray:
    """Every frame of h's file as stored, (frames, rows, cols), before any rescale."""
    import pydicom

    try:
        ds = pydicom.dcmread(h.path)
        try:
            # pydicom checks that every pixel byte is there (GDCM zero-fills a cut-off file), and
            # decodes RLE, JPEG-LS, JPEG 2000 and baseline JPEG with what is installed.
            stored = ds.pixel_array
        except (NotImplementedError, RuntimeError):
            if not ds.file_meta.TransferSyntaxUID.is_compressed:
                raise
            stored = _gdcm_stored_values(ds)      # JPEG lossless: no permissive decoder for pydicom
        return np.asarray(stored, dtype=np.float32).reshape(-1, h.rows, h.cols)
    except UnreadableInput:
        raise
    except Exception as exc:  # pydicom and SimpleITK raise many types on a damaged file
        raise UnreadableInput(f"{h.path}: cannot decode pixel data ({first_line(exc)})") from None


def _gdcm_stored_values(ds) -> np.ndarray:
    """GDCM decodes every syntax, but applies a rescale of its own choosing (for enhanced CT, the shared
    one to every frame): it is given a copy with no rescale, so that each frame's own is applied here."""
    import tempfile

    for name in ("RescaleSlope", "RescaleIntercept"):
        if name in ds:
            delattr(ds, name)
    for group in (*ds.get("SharedFunctionalGroupsSequence", []), *ds.get("PerFrameFunctionalGroupsSequence", [])):
        if "PixelValueTransformationSequence" in group:
            del group.PixelValueTransformationSequence
    with tempfile.TemporaryDirectory(prefix="aspects-gdcm-") as tmp:
        copy = Path(tmp) / "image.dcm"
        ds.save_as(copy)
        return sitk.GetArrayFromImage(sitk.ReadImage(str(copy), imageIO="GDCMImageIO"))


def _to_hu(stored: np.ndarray, h: _Slice) -> np.ndarray:
    """One plane in HU; scanner padding (PixelPaddingValue, or values below air) becomes air."""
    hu = stored * h.slope + h.intercept
    if h.padding is not None:
        hu[np.isclose(stored, h.padding)] = PADDING_BELOW_HU
    return np.maximum(hu, PADDING_BELOW_HU)


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


def read_zip(p: Path) -> Study:
    """A zipped series: unpacked into a private folder (size- and name-checked first), read as a folder."""
    import shutil
    import tempfile
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            if len(members) > ZIP_MAX_FILES or sum(m.file_size for m in members) > ZIP_MAX_BYTES:
                raise AbsurdSize(f"{p}: archive of {len(members)} files, "
                                 f"{sum(m.file_size for m in members) / 1e9:.1f} GB unpacked: not a head CT series")
            tmp = Path(tempfile.mkdtemp(prefix="aspects-zip-"))
            try:
                for i, m in enumerate(members):
                    # Never trust member names: every file gets a plain name of our own inside tmp.
                    with z.open(m) as src, open(tmp / f"{i:06d}", "wb") as dst:
                        shutil.copyfileobj(src, dst)
                try:
                    study = read_dicom_folder(tmp)
                except AspectsError as exc:
                    # Name the archive and its members, not a private folder that is about to go.
                    message = str(exc)
                    for i, m in enumerate(members):
                        message = message.replace(str(tmp / f"{i:06d}"), f"{p}:{m.filename}")
                    raise type(exc)(message.replace(str(tmp), str(p))) from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UnreadableInput(f"{p}: cannot read the zip archive ({exc})") from None
    return replace(study, source=str(p))
