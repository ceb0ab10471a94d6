"""A DICOM study: a folder (or a zip of one, or one enhanced CT file) of CT images, one series
chosen (series.py), stacked into one volume with its exact geometry (gantry tilt, uneven spacing)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import AbsurdSize, AspectsError, InconsistentSeries, NoSeries, TooFewSlices, UnreadableInput
from .images import Plane, Refused, planes_hu, read_planes
from .series import (
    age_warning,
    choose_series,
    criteria_met,
    drop_copies,
    passed_over,
    patient_age_years,
    refuse_mixed_studies,
    series_limits,
)
from .study import MAX_GANTRY_TILT_DEG, MIN_SLICES, Study, check_dims
from .volume import VOLUME_SUFFIXES

ZIP_MAX_BYTES = 4 << 30
ZIP_MAX_FILES = 20000


def read_dicom_folder(folder: Path) -> Study:
    files = sorted(str(f) for f in folder.rglob("*") if f.is_file())
    if not files:
        raise NoSeries(f"{folder}: folder is empty")
    return _read_files(files, folder)


def read_dicom_file(path: Path) -> Study:
    """One DICOM file (an enhanced CT holds a whole series): the same checks as a folder's series."""
    return _read_files([str(path)], path)


def _read_files(files: list[str], folder: Path) -> Study:
    planes: list[Plane] = []
    refused: list[Refused] = []
    ignored = 0
    for f in files:
        got = read_planes(f)
        if got is None:
            ignored += 1
        elif isinstance(got, Refused):
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
    planes, duplicates = drop_copies(planes)
    series: dict[str, list[Plane]] = {}
    for h in planes:
        # Some scanners file the scout under the axial series' UID: apart, the chooser passes it over,
        # where together they were refused as "slices with different orientations".
        series.setdefault(h.series_uid + (" localizer" if "LOCALIZER" in h.image_type else ""), []).append(h)
    chosen = choose_series(series, folder)
    refuse_mixed_studies(series, folder)
    # A file that belongs to the chosen series (or cannot say which series it belongs to) but cannot be
    # read is a missing slice, wherever it sits in the stack.
    broken = [r for r in refused if r.series_uid in (None, chosen[0].series_uid)]
    if broken:
        raise UnreadableInput(f"{broken[0].path}: {broken[0].reason}; a slice of the series cannot be read "
                              f"({len(broken)} such file(s))")
    return _stack_series(chosen, folder, passed_over(series, chosen), n_ignored=ignored, n_copies=duplicates)


def _gaps(steps: np.ndarray) -> np.ndarray:
    """Indices of steps that are missing slices: much larger than the steps on both sides. A series
    whose spacing changes in runs (4 mm through the posterior fossa, 7 mm above) has no gap."""
    out = []
    for k, s in enumerate(steps):
        neighbours = [steps[j] for j in (k - 1, k + 1) if 0 <= j < len(steps)]
        if neighbours and all(s > 1.5 * n for n in neighbours):
            out.append(k)
    return np.array(out, int)


def _stack_series(slices: list[Plane], folder: Path, others: list[str], n_ignored: int, n_copies: int) -> Study:
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
        raise InconsistentSeries(f"{folder}: {_repeated_positions(slices, along, steps)}")
    gaps = _gaps(steps)
    if len(gaps):
        k = int(gaps[0])
        raise InconsistentSeries(f"{folder}: slices missing between z={along[k]:.1f} mm and z={along[k + 1]:.1f} mm "
                                 f"(gap {steps[k]:.1f} mm, slice spacing around it "
                                 f"{np.median(np.delete(steps, gaps)):.1f} mm)")
    step = float(np.median(steps))

    warnings = []
    hu = planes_hu(slices)

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
    limits = series_limits(first.description, first.image_type, first.kernel)
    if any(h.lossy for h in slices):
        limits = {"lossy-compressed": "the series is lossy-compressed (LossyImageCompression 01 or a lossy "
                                      "transfer syntax): subtle density differences may be altered; check the "
                                      "source images", **limits}
    warnings += limits.values()
    child = age_warning(dict(first.identity))
    if child:
        warnings.insert(0, child)
    if others:
        number = dict(first.identity).get("SeriesNumber")
        warnings.append(f"folder holds {len(others) + 1} series; scored series {number + ' ' if number else ''}"
                        f"'{first.description or first.series_uid}'; passed over: {'; '.join(others[:6])}"
                        + (f"; and {len(others) - 6} more" if len(others) > 6 else ""))
    if n_ignored:
        warnings.append(f"{n_ignored} file(s) in the folder are not DICOM images and were ignored")
    if n_copies:
        warnings.append(f"{n_copies} image(s) in the folder twice (a copy with the same SOPInstanceUID and "
                        "position) read once")
    identity: dict[str, object] = dict(first.identity)
    identity["SOPInstanceUIDs"] = [h.sop_uid for h in slices]
    years = patient_age_years(identity)
    headers = () if any(h.frame is not None for h in slices) else tuple(h.header for h in slices)
    return Study(hu=hu, affine=affine, source=str(folder), warnings=tuple(warnings), source_images=headers,
                 metadata={"format": "dicom", "modality": "CT", "series_uid": first.series_uid,
                           "series_description": first.description, "series_criteria": criteria_met(slices),
                           "source_limits": list(limits),
                           "slices": len(slices),
                           "gantry_tilt_deg": round(tilt, 2), "identity": identity,
                           "patient_age_years": None if years is None else round(years, 1),
                           "source_slice_positions_mm": [round(float(a - along[0]), 3) for a in along]})


def _repeated_positions(slices: list[Plane], along: np.ndarray, steps: np.ndarray) -> str:
    """Which positions hold two images, and, where the headers say so, that two acquisitions were
    filed as one series (a part rescanned after the patient moved): which to score is a reader's call."""
    repeated = np.flatnonzero(steps < 1e-3)
    where = (f"{len(repeated)} position(s) hold two or more images (z = {along[repeated[0]] - along[0]:.1f} to "
             f"{along[repeated[-1]] - along[0]:.1f} mm from the first slice)")
    acquisitions = sorted({str(getattr(h.header, "AcquisitionNumber", "") or "") for h in slices
                           if h.frame is None} - {""}, key=lambda a: (len(a), a))
    if len(acquisitions) > 1:
        return (f"{where}, from acquisitions {', '.join(acquisitions)} filed as one series (a part rescanned?); "
                "give one acquisition's images")
    return f"{where}: duplicated images or two series under one SeriesInstanceUID"


def _regrid_step(steps: np.ndarray) -> float:
    """Spacing for an uneven series. Runs of equal steps (a sequential protocol: 4 mm, then 7 mm)
    keep their finest run's step; irregular jitter keeps the median."""
    runs = [s for k, s in enumerate(steps)
            if any(abs(s - steps[j]) < 0.02 * s for j in (k - 1, k + 1) if 0 <= j < len(steps))]
    return float(min(runs)) if runs else float(np.median(steps))


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
