"""Hostile and unusual inputs, each with the exit code the README promises.

    python -m tests.corpus            # one row per input: name, expected, got, stderr lines, verdict

tests/test_hostile.py runs the same table. Every input is generated here (or is a
real file from ../shared/data/dicom, skipped where absent); nothing is committed.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from tests.dicom_util import edit_slices, head_phantom, write_series

ROOT = Path(__file__).resolve().parent.parent
SHARED_DICOM = ROOT.parent / "shared" / "data" / "dicom"
DEMO = ROOT / "runtime" / "data" / "default_study.nii.gz"


@dataclass(frozen=True)
class Case:
    name: str
    expected: int                        # exit code
    build: Callable[[Path], list[str]]   # writes the input under a folder; returns the CLI arguments after "score"
    needs: Path | None = None            # a shared file the case reads (skipped where absent)
    scores: bool = False                 # a full scoring run (seconds, not milliseconds)


def _nifti(path: Path, hu: np.ndarray, spacing=(1.0, 1.0, 5.0)) -> Path:
    img = sitk.GetImageFromArray(hu.astype(np.float32))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def _demo_volume() -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(DEMO))
    return sitk.GetArrayFromImage(img).astype(np.float32), img


def _demo_series(folder: Path, hu: np.ndarray | None = None, **kw) -> Path:
    """The demo head (or a version of it) as a DICOM series at half its in-plane resolution."""
    full, img = _demo_volume()
    sp = img.GetSpacing()
    write_series(folder, (full if hu is None else hu)[:, ::2, ::2], spacing=(sp[0] * 2, sp[1] * 2, sp[2]), **kw)
    return folder


def _demo_variant(path: Path, array: np.ndarray) -> Path:
    _, ref = _demo_volume()
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.CopyInformation(ref)
    sitk.WriteImage(out, str(path))
    return path


# ---------------------------------------------------------------- builders

def empty_path(d: Path) -> list[str]:
    return [""]


def rotated_90(d: Path) -> list[str]:
    hu, _ = _demo_volume()
    return [str(_demo_variant(d / "rot90.nii.gz", np.rot90(hu, 1, axes=(1, 2))))]


def upside_down(d: Path) -> list[str]:
    hu, _ = _demo_volume()
    return [str(_demo_variant(d / "zflip.nii.gz", hu[::-1]))]


def slices_along_j(d: Path) -> list[str]:
    """The demo's voxels written left, inferior, posterior: the slice axis is the file's second."""
    _, img = _demo_volume()
    path = d / "lip.nii.gz"
    sitk.WriteImage(sitk.DICOMOrient(img, "LIP"), str(path))
    return [str(path)]


def coronal_reformat(d: Path) -> list[str]:
    """5 mm slices front to back, 1 mm pixels across them."""
    return [str(_nifti(d / "coronal.nii.gz", head_phantom(shape=(120, 40, 160), spacing=(1.0, 5.0, 1.0)),
                       spacing=(1.0, 5.0, 1.0)))]


def prone_under_supine_header(d: Path) -> list[str]:
    hu, _ = _demo_volume()
    return [str(_demo_variant(d / "prone.nii.gz", hu[:, ::-1, ::-1]))]


def bone_cylinder(d: Path) -> list[str]:
    nz, ny, nx = 32, 256, 256
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = np.hypot(yy - ny / 2, xx - nx / 2)
    sl = np.full((ny, nx), -1000.0)
    sl[r < 120] = 900.0
    sl[r < 110] = 32.0
    return [str(_nifti(d / "cylinder.nii.gz", np.repeat(sl[None], nz, axis=0), (0.8, 0.8, 5.0)))]


def _series(d: Path, **kw) -> Path:
    folder = d / "series"
    write_series(folder, head_phantom(), spacing=(1.0, 1.0, 5.0), **kw)
    return folder


def damaged_first_slice(d: Path) -> list[str]:
    folder = _series(d)
    first = sorted(folder.iterdir())[0]
    first.write_bytes(first.read_bytes()[:600])
    return [str(folder)]


def damaged_last_slice(d: Path) -> list[str]:
    folder = _series(d)
    last = sorted(folder.iterdir())[-1]
    last.write_bytes(last.read_bytes()[:600])
    return [str(folder)]


def cut_inside_pixels(d: Path) -> list[str]:
    folder = _series(d)
    mid = sorted(folder.iterdir())[5]
    data = mid.read_bytes()
    mid.write_bytes(data[: len(data) - 5000])
    return [str(folder)]


def lossy_flagged(d: Path) -> list[str]:
    edit_slices(_demo_series(d / "lossy"), lambda ds: setattr(ds, "LossyImageCompression", "01"))
    return [str(d / "lossy")]


def _contrast_series(folder: Path, description: str, positions_mm: list[float]) -> None:
    """A contrast study's series: the phantom head with bright vessels, its agent in the header."""
    hu = head_phantom()
    hu[:, 90:110, 70:74] = 350.0
    slices = np.stack([hu[min(int(z // 5), len(hu) - 1)] for z in positions_mm])
    write_series(folder, slices, spacing=(1.0, 1.0, 1.25), description=description, z_positions=positions_mm)
    edit_slices(folder, lambda ds: setattr(ds, "ContrastBolusAgent", "Iohexol 350"))


def stroke_protocol(d: Path) -> list[str]:
    """NCCT, CTA (more slices) and perfusion (time points at the same positions) in one study."""
    _demo_series(d / "study" / "ncct", description="CT HEAD W/O CONTRAST")
    _contrast_series(d / "study" / "cta", "CTA HEAD 1.25mm", [1.25 * k for k in range(120)])
    _contrast_series(d / "study" / "ctp", "CT PERFUSION", [40 + 5 * (k % 8) for k in range(160)])
    return [str(d / "study")]


def bare_datasets(d: Path) -> list[str]:
    from tests.dicom_util import strip_file_meta
    for f in sorted(_demo_series(d / "bare").iterdir()):
        strip_file_meta(f)
    return [str(d / "bare")]


def scout_in_the_axial_series(d: Path) -> list[str]:
    """The scout filed under the axial series' own UID, as some scanners do: a coronal LOCALIZER image."""
    import pydicom
    folder = _demo_series(d / "scout")
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.ImageType, ds.ImageOrientationPatient = ["ORIGINAL", "PRIMARY", "LOCALIZER"], [1, 0, 0, 0, 0, -1]
    ds.save_as(folder / "scout.dcm")
    return [str(folder)]


def no_rescale_tags(d: Path) -> list[str]:
    def drop(ds):
        del ds.RescaleSlope, ds.RescaleIntercept
    edit_slices(_demo_series(d / "raw"), drop)
    return [str(d / "raw")]


def nifti_without_intercept(d: Path) -> list[str]:
    hu, _ = _demo_volume()
    return [str(_demo_variant(d / "shifted.nii.gz", np.maximum(hu, -1024) + 1024))]


def one_slice_file(d: Path) -> list[str]:
    return [str(sorted(_series(d).iterdir())[7])]


def contrast_only(d: Path) -> list[str]:
    _contrast_series(d / "cta", "HEAD 1.25mm", [1.25 * k for k in range(64)])
    return [str(d / "cta")]


def chest_ct(d: Path) -> list[str]:
    write_series(d / "chest", head_phantom(), description="THORAX 5mm")
    edit_slices(d / "chest", lambda ds: setattr(ds, "BodyPartExamined", "CHEST"))
    return [str(d / "chest")]


def two_patients(d: Path) -> list[str]:
    write_series(d / "mixed" / "a", head_phantom(), patient_id="PAT-A")
    write_series(d / "mixed" / "b", head_phantom(), patient_id="PAT-B")
    return [str(d / "mixed")]


def one_series_per_file(d: Path) -> list[str]:
    """An anonymiser that rewrote SeriesInstanceUID per file: a stack of one-image series."""
    import pydicom
    write_series(d / "anon", head_phantom())
    edit_slices(d / "anon", lambda ds: setattr(ds, "SeriesInstanceUID", pydicom.uid.generate_uid()))
    return [str(d / "anon")]


def part_rescanned_in_the_series(d: Path) -> list[str]:
    """Three positions scanned again after the patient moved, filed in the same series."""
    hu = head_phantom()
    write_series(d / "rescan", np.concatenate([hu, hu[4:7]]), z_positions=[*range(0, 80, 5), 20, 25, 30])
    edit_slices(d / "rescan", lambda ds: setattr(ds, "AcquisitionNumber", 2), slice(16, None))
    return [str(d / "rescan")]


def nan_nifti(d: Path) -> list[str]:
    hu, _ = _demo_volume()
    hu[10, 200, 200] = np.nan
    return [str(_demo_variant(d / "nan.nii.gz", hu))]


def inf_nifti(d: Path) -> list[str]:
    hu, _ = _demo_volume()
    hu[10, 200, 200] = np.inf
    return [str(_demo_variant(d / "inf.nii", hu))]


def huge_header(d: Path) -> list[str]:
    """A header promising 2049 x 2049 x 300 voxels and almost no data: refused from the header alone."""
    img = sitk.GetImageFromArray(np.zeros((4, 64, 64), np.int16))
    sitk.WriteImage(img, str(d / "small.nii"))
    raw = bytearray((d / "small.nii").read_bytes())
    raw[42:48] = np.array([2049, 2049, 300], "<i2").tobytes()
    path = d / "huge.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes(raw))
    return [str(path)]


def zero_pixdim(d: Path) -> list[str]:
    hu, _ = _demo_volume()
    path = _nifti(d / "zero.nii", hu, (0.43, 0.43, 5.0))
    raw = bytearray(path.read_bytes())
    raw[84:88] = np.array([0.0], "<f4").tobytes()      # pixdim[3]
    path.write_bytes(bytes(raw))
    return [str(path)]


def qform_sform_disagree(d: Path) -> list[str]:
    """Both orientations set, the sform with its first axis flipped: left and right depend on the reader."""
    hu, _ = _demo_volume()
    path = _nifti(d / "two_orientations.nii", hu, (0.43, 0.43, 5.0))
    raw = bytearray(path.read_bytes())
    srow_x = np.frombuffer(bytes(raw[280:296]), "<f4").copy()
    srow_x[0] = -srow_x[0]
    raw[280:296] = srow_x.tobytes()
    path.write_bytes(bytes(raw))
    return [str(path)]


def mha_says_mr(d: Path) -> list[str]:
    hu, _ = _demo_volume()
    path = _nifti(d / "mr.mha", hu[:, ::2, ::2], (0.86, 0.86, 5.0))
    text = path.read_bytes().replace(b"ObjectType = Image\n", b"ObjectType = Image\nModality = MET_MOD_MR\n", 1)
    path.write_bytes(text)
    return [str(path)]


def missing_position(d: Path) -> list[str]:
    folder = _series(d)
    edit_slices(folder, lambda ds: delattr(ds, "ImagePositionPatient"))
    return [str(folder)]


def unwritable_output(d: Path) -> list[str]:
    blocker = d / "file"
    blocker.write_text("a file where the output folder's parent should be")
    return [str(DEMO), "--out", str(blocker / "out")]


def dangling_symlink(d: Path) -> list[str]:
    out = d / "out"
    out.mkdir()
    os.symlink(d / "outside.json", out / "report.json")
    return [str(DEMO), "--out", str(out)]


def padded_dicom(d: Path) -> list[str]:
    """Scanner padding at -3024 HU outside the scan circle (stored 0 with intercept -3024... as GE does)."""
    hu, _ = _demo_volume()
    ny, nx = hu.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    hu[:, np.hypot(yy - ny / 2, xx - nx / 2) > ny / 2 - 4] = -3024.0
    return [str(_demo_series(d / "padded", hu, intercept=-3024.0))]


def zipped_series(d: Path) -> list[str]:
    _demo_series(d / "s")
    path = d / "series.zip"
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted((d / "s").iterdir()):
            z.write(f, f"study/{f.name}")
    return [str(path)]


def enhanced_ct(d: Path) -> list[str]:
    from tests.dicom_util import write_enhanced
    hu, img = _demo_volume()
    sp = img.GetSpacing()
    return [str(write_enhanced(d / "enhanced.dcm", hu[:, ::2, ::2], spacing=(sp[0] * 2, sp[1] * 2, sp[2])))]


def ge_head_tilt(d: Path) -> list[str]:
    return [str(SHARED_DICOM / "ge_head_tilt")]


def philips_phantom(d: Path) -> list[str]:
    return [str(SHARED_DICOM / "philips_phantom_multiseries")]


CASES: tuple[Case, ...] = (
    Case("empty path argument", 2, empty_path),
    Case("head rotated 90 degrees in-plane", 8, rotated_90, scores=True),
    Case("head upside down (z flipped)", 8, upside_down, scores=True),
    Case("prone head under a supine header", 8, prone_under_supine_header, scores=True),
    Case("bone cylinder filled with 32 HU", 8, bone_cylinder, scores=True),
    Case("damaged first slice of a series", 3, damaged_first_slice),
    Case("damaged last slice of a series", 3, damaged_last_slice),
    Case("slice cut off inside its pixel data", 3, cut_inside_pixels),
    Case("two patients in one folder", 7, two_patients),
    Case("every file its own SeriesInstanceUID (anonymiser)", 7, one_series_per_file),
    Case("a part rescanned in the same series", 7, part_rescanned_in_the_series),
    Case("volume stored with its slices along the second voxel axis", 0, slices_along_j, scores=True),
    Case("coronal reconstruction", 7, coronal_reformat),
    Case("NaN voxel in NIfTI", 3, nan_nifti),
    Case("infinite voxel in NIfTI", 3, inf_nifti),
    Case("2049 x 2049 x 300 header", 9, huge_header),
    Case("zero pixdim in NIfTI", 9, zero_pixdim),
    Case("NIfTI whose qform and sform disagree on left and right", 7, qform_sform_disagree),
    Case("MHA whose header says MR", 5, mha_says_mr),
    Case("DICOM without ImagePositionPatient", 4, missing_position),
    Case("output folder cannot be created", 15, unwritable_output),
    Case("dangling symlink named report.json", 10, dangling_symlink),
    Case("padding at -3024 outside the scan circle", 0, padded_dicom, scores=True),
    Case("zip of a series", 0, zipped_series, scores=True),
    Case("enhanced multi-frame CT", 0, enhanced_ct, scores=True),
    Case("lossy-compressed series (warned)", 0, lossy_flagged, scores=True),
    Case("stroke protocol: NCCT, CTA and perfusion in one study", 0, stroke_protocol, scores=True),
    Case("contrast-enhanced series only", 5, contrast_only),
    Case("chest CT (BodyPartExamined CHEST)", 8, chest_ct),
    Case("one image of a series given as the study", 6, one_slice_file),
    Case("DICOM series whose rescale tags were dropped (brain near 1040)", 3, no_rescale_tags),
    Case("NIfTI saved without its -1024 intercept", 3, nifti_without_intercept),
    Case("DICOM files without preamble and file meta (SEG, SR written)", 0, bare_datasets, scores=True),
    Case("scout image filed under the axial series' UID", 0, scout_in_the_axial_series, scores=True),
    Case("GE head, 4 and 7 mm slices, 18.5 degree tilt", 0, ge_head_tilt, needs=SHARED_DICOM / "ge_head_tilt",
         scores=True),
    Case("Philips head phantom, several series", 8, philips_phantom,
         needs=SHARED_DICOM / "philips_phantom_multiseries", scores=True),
)


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    out: Path


def run_case(case: Case, work: Path) -> Outcome:
    args = case.build(work)
    if "--out" not in args:
        args = [*args, "--out", str(work / "report")]
    run = subprocess.run([sys.executable, "-m", "runtime.cli", "score", *args], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    out = Path(args[args.index("--out") + 1])
    return Outcome(run.returncode, run.stdout, run.stderr, out)


def main() -> int:
    failures = 0
    print(f"{'input':48s} {'expected':>8s} {'got':>4s} {'stderr':>6s}  verdict")
    for case in CASES:
        if case.needs is not None and not case.needs.exists():
            print(f"{case.name:48s} {case.expected:8d} {'-':>4s} {'-':>6s}  skipped ({case.needs} absent)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            got = run_case(case, Path(tmp))
        lines = got.stderr.splitlines()
        ok = got.code == case.expected and (got.code == 0 or (len(lines) == 1 and lines[0].startswith("error:")))
        failures += not ok
        print(f"{case.name:48s} {case.expected:8d} {got.code:4d} {len(lines):6d}  {'ok' if ok else 'FAIL'}"
              + ("" if ok else f"  {lines[-1] if lines else ''}"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
