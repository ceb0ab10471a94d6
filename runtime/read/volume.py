"""A single volume file (NIfTI, MHA/MHD, NRRD, or a bare DICOM file), header first; with dcm2niix's
JSON sidecar where one lies beside it, the series' own words are checked as a DICOM series' are."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from zlib_ng import gzip_ng, zlib_ng  # inflates a thin-slice .nii.gz in under half zlib's time

from ..errors import AbsurdSize, InconsistentSeries, UnreadableInput, WrongModality
from .images import named_agents
from .series import series_limits
from .study import Study, check_dims, first_line

# The files read_volume_file is for (a DICOM folder is read by dicom.py, a .zip of one too).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
# MetaImage's modality field: anything but CT (or unknown) is refused.
_MHA_NOT_CT = {"MET_MOD_MR": "MR", "MET_MOD_NM": "NM", "MET_MOD_US": "US"}
_NIFTI_FLOAT = {16: "<f4", 64: "<f8"}      # NIfTI datatype codes that can hold NaN or infinity
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}
# What a short or damaged .nii.gz raises (zlib-ng's stub types its error as an instance, not a class).
_GZIP_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, zlib_ng.error)  # type: ignore[assignment]


def read_volume_file(p: Path) -> Study:
    """Header first: size, spacing and modality are checked before a single pixel is read, so an
    absurd or hostile file costs milliseconds, not the time to decompress it."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UnreadableInput(f"{p}: cannot read image ({first_line(exc)})") from None
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        raise UnreadableInput(f"{p}: expected a 3-D scalar volume, got {reader.GetDimension()}-D "
                              f"with {reader.GetNumberOfComponents()} component(s)")
    meta = {k: reader.GetMetaData(k).strip() for k in reader.GetMetaDataKeys()}
    modality = meta.get("0008|0060", "") or _MHA_NOT_CT.get(meta.get("Modality", ""), "")
    if modality and modality.upper() != "CT":
        raise WrongModality(f"{p}: modality is {modality}, this runtime scores CT only")
    sidecar_warnings, limits = _check_sidecar(p)
    direction = reader.GetDirection()
    _check_geometry(p, reader.GetSpacing(), direction, reader.GetOrigin())
    order = axial_order(direction)
    check_dims(tuple(reader.GetSize()[a] for a in order), p)
    nifti = _nifti_header(p)
    data = _check_nifti(p, nifti) if nifti is not None else None
    if nifti is not None and data is not None and nifti.datatype in _NIFTI_DTYPES:
        # The checks already decompressed every voxel: use those bytes rather than decompress again.
        hu = _nifti_voxels(data, nifti)
    else:
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise UnreadableInput(f"{p}: cannot read image ({first_line(exc)})") from None
        hu = sitk.GetArrayFromImage(image).astype(np.float32)
    hu, affine = reorder_axes(hu, _affine(direction, reader.GetSpacing(), reader.GetOrigin()), order)
    warnings = () if order == (0, 1, 2) else (
        f"the volume is stored with its head-to-foot axis as voxel axis {'ijk'[order[2]]}: "
        "its voxels were reordered into axial slices (exactly, no resampling)",)
    return Study(hu=hu, affine=affine, source=str(p), warnings=(*warnings, *sidecar_warnings, *limits.values()),
                 metadata={"format": p.suffix.lstrip(".") or "dicom", "modality": modality or "unknown",
                           "source_limits": list(limits)})


def _check_sidecar(p: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    """dcm2niix writes the series' header words into <name>.json: a modality other than CT, or a
    contrast agent, is refused as in a DICOM folder; a sharp kernel or a contrast study's name is a
    limit of the source (runtime.read.series.series_limits). Returns (warnings, limits)."""
    name = p.name
    stem = next((name[: -len(s)] for s in VOLUME_SUFFIXES if name.lower().endswith(s)), p.stem)
    sidecar = p.with_name(stem + ".json")
    if not sidecar.is_file():
        return (), {}
    try:
        words = json.loads(sidecar.read_text())
        if not isinstance(words, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return (f"{sidecar.name} beside the volume could not be read ({first_line(exc)}); its header words "
                "were not checked",), {}

    def text(key: str) -> str:
        value = words.get(key) or ""
        return "\\".join(map(str, value)) if isinstance(value, list) else str(value)

    if text("Modality") and text("Modality").upper() != "CT":
        raise WrongModality(f"{p}: its sidecar {sidecar.name} says modality {text('Modality')}, "
                            "this runtime scores CT only")
    agent = named_agents([text("ContrastBolusAgent")])
    if agent:
        raise WrongModality(f"{p}: its sidecar {sidecar.name} names a contrast agent ('{agent}'); ASPECTS is "
                            "read on a non-contrast CT")
    return (), series_limits(text("SeriesDescription"), text("ImageType"), text("ConvolutionKernel"))


def _check_geometry(p: Path, spacing, direction, origin) -> None:
    """ITK takes a MetaImage's or NRRD's header as written. A negative voxel size mirrors the head
    (a left stroke reported on the right), a direction matrix that is not a rotation scales or
    shears it, and a non-finite origin puts it nowhere: each is refused before a voxel is read."""
    sp, d, o = np.asarray(spacing, float), np.asarray(direction, float).reshape(3, 3), np.asarray(origin, float)
    if not np.isfinite(sp).all() or sp.min() <= 0:
        raise AbsurdSize(f"{p}: voxel size {_numbers(sp)} mm in the header (zero, negative or not a number)")
    if not np.isfinite(d).all() or not np.allclose(d.T @ d, np.eye(3), atol=0.01):
        raise UnreadableInput(f"{p}: the header's direction matrix {_numbers(d.ravel())} is not a rotation "
                              "(its axes are not orthogonal unit vectors)")
    if not np.isfinite(o).all():
        raise UnreadableInput(f"{p}: the header's origin {_numbers(o)} is not a finite position")


def _numbers(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def axial_order(direction) -> tuple[int, int, int]:
    """The voxel axes (i, j, k) reordered so that the last is the one closest to head-to-foot.
    Every stage after the reader takes array axis 0 as the slice axis (its spacing sets the slab
    averaging and the slice checks), so a head written with its slices along another axis (a
    (z, y, x) array saved as if it were (x, y, z), with a correct affine) must be put in that order
    first. The in-plane axes keep their order; an axis within 1e-3 of the best stays where it is."""
    head_foot = np.abs(np.asarray(direction, float).reshape(3, 3)[2])    # LPS z of each axis's direction
    k = 2 if head_foot[2] >= head_foot.max() - 1e-3 else int(np.argmax(head_foot))
    i, j = (a for a in range(3) if a != k)
    return i, j, k


def reorder_axes(hu: np.ndarray, affine: np.ndarray, order: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels and the same patient geometry with voxel axes (i, j, k) in `order`; hu is
    (z, y, x) = (k, j, i), so index axis a is array axis 2 - a."""
    if order == (0, 1, 2):
        return hu, affine
    out = affine.copy()
    out[:3, :3] = affine[:3, list(order)]
    return np.ascontiguousarray(hu.transpose([2 - a for a in reversed(order)])), out


@dataclass(frozen=True)
class _NiftiHeader:
    dims: tuple[int, ...]
    datatype: int
    bitpix: int
    pixdim: tuple[float, ...]
    vox_offset: int
    byte_order: str
    scl_slope: float
    scl_inter: float
    qform_code: int
    sform_code: int
    quatern_bcd: tuple[float, ...]      # quatern_b, quatern_c, quatern_d
    qfac: float
    srow: tuple[float, ...]            # srow_x, srow_y, srow_z: 12 numbers, row by row


def _nifti_header(p: Path) -> _NiftiHeader | None:
    """The NIfTI-1 fields ITK papers over (it turns a zero pixdim into 1 and NaN voxels into 0)."""
    name = p.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    try:
        with (gzip_ng.open(p, "rb") if name.endswith(".gz") else open(p, "rb")) as f:
            header = f.read(352)
    except _GZIP_ERRORS as exc:
        raise UnreadableInput(f"{p}: file is truncated or corrupt ({exc})") from None
    if len(header) < 348:
        raise UnreadableInput(f"{p}: file is too short to be NIfTI")
    order = "<" if int(np.frombuffer(header[:4], "<i4")[0]) == 348 else ">"
    dims = np.frombuffer(header[40:56], f"{order}i2")
    n = int(dims[0])
    if not 0 < n < 8:
        raise UnreadableInput(f"{p}: NIfTI header has {n} dimensions")
    return _NiftiHeader(dims=tuple(int(d) for d in dims[1:1 + n]),
                        datatype=int(np.frombuffer(header[70:72], f"{order}i2")[0]),
                        bitpix=int(np.frombuffer(header[72:74], f"{order}i2")[0]),
                        pixdim=tuple(float(v) for v in np.frombuffer(header[76:108], f"{order}f4")[1:1 + n]),
                        vox_offset=int(np.frombuffer(header[108:112], f"{order}f4")[0]), byte_order=order,
                        scl_slope=float(np.frombuffer(header[112:116], f"{order}f4")[0]),
                        scl_inter=float(np.frombuffer(header[116:120], f"{order}f4")[0]),
                        qform_code=int(np.frombuffer(header[252:254], f"{order}i2")[0]),
                        sform_code=int(np.frombuffer(header[254:256], f"{order}i2")[0]),
                        quatern_bcd=tuple(float(v) for v in np.frombuffer(header[256:268], f"{order}f4")),
                        qfac=-1.0 if float(np.frombuffer(header[76:80], f"{order}f4")[0]) < 0 else 1.0,
                        srow=tuple(float(v) for v in np.frombuffer(header[280:328], f"{order}f4")))


def _nifti_voxels(data: np.ndarray, h: _NiftiHeader) -> np.ndarray:
    """float32 (z, y, x) from the voxel bytes (x varies fastest, as ITK reads them), with the
    header's intensity scaling where it sets one (slope 0 means none)."""
    nx, ny, nz = h.dims[:3]
    hu = np.frombuffer(data, f"{h.byte_order}{_NIFTI_DTYPES[h.datatype]}", count=nx * ny * nz).reshape(nz, ny, nx)
    hu = hu.astype(np.float32)
    if np.isfinite(h.scl_slope) and h.scl_slope != 0 and (h.scl_slope, h.scl_inter) != (1.0, 0.0):
        hu = hu * np.float32(h.scl_slope) + np.float32(h.scl_inter)
    return hu


def _qform_axes(h: _NiftiHeader) -> np.ndarray:
    """The qform's voxel-axis directions (columns, RAS), from its quaternion (NIfTI-1 standard)."""
    b, c, d = h.quatern_bcd
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    r = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                  [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                  [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    r[:, 2] *= h.qfac
    return r


def _check_orientations_agree(p: Path, h: _NiftiHeader) -> None:
    """A NIfTI header may carry two orientations, qform and sform, and readers differ in which they
    trust. Where both are set and one flips an axis of the other, which side is the patient's left
    depends on the reader: refused, rather than a stroke scored on one of two sides."""
    if h.qform_code <= 0 or h.sform_code <= 0:
        return
    s = np.array(h.srow).reshape(3, 4)[:, :3]
    norms = np.linalg.norm(s, axis=0)
    if not np.isfinite(s).all() or norms.min() <= 0:
        return                                  # no usable sform: ITK reads the qform
    agreement = np.sum(_qform_axes(h) * (s / norms), axis=0)
    if agreement.min() < 0:
        raise InconsistentSeries(f"{p}: the NIfTI header's qform and sform point voxel axis "
                                 f"{'ijk'[int(np.argmin(agreement))]} opposite ways, so left and right depend on "
                                 "the reader; write the file again with one orientation (both the same, or one "
                                 "of qform_code and sform_code 0)")


def _check_nifti(p: Path, h: _NiftiHeader) -> np.ndarray | None:
    """Zero or non-finite voxel sizes, orientations that disagree, a truncated or damaged file and
    NaN/infinite voxels are refused here. Returns the voxel bytes where it had to read them all (a .gz
    file, or float data)."""
    if any(not np.isfinite(v) or v <= 0 for v in h.pixdim[:3]):
        raise AbsurdSize(f"{p}: voxel size {h.pixdim[:3]} mm in the header (zero, negative or not a number)")
    _check_orientations_agree(p, h)
    need = h.vox_offset + int(np.prod(h.dims, dtype=np.int64)) * h.bitpix // 8
    gz = p.name.lower().endswith(".gz")
    if not gz and p.stat().st_size < need:
        raise UnreadableInput(f"{p}: file is truncated ({p.stat().st_size} of {need} bytes)")
    if not gz and h.datatype not in _NIFTI_FLOAT:
        return None
    # Read the bytes the header promises, and from a .gz one past them (no more: a gzip bomb stops here),
    # checking that they are all there and, for float data, finite.
    data = np.empty(need - h.vox_offset, np.uint8)      # numpy's large buffers get huge pages: 6x faster to fill
    view = data.data
    try:
        with (gzip_ng.open(p, "rb") if gz else open(p, "rb")) as f:
            f.seek(h.vox_offset)
            got = 0
            dtype = _NIFTI_FLOAT.get(h.datatype)
            while got < len(data):
                n = f.readinto(view[got:got + (1 << 22)])
                if not n:
                    break
                if dtype is not None:
                    chunk = view[got:got + n]
                    usable = n - n % np.dtype(dtype).itemsize
                    if not np.isfinite(np.frombuffer(chunk[:usable], dtype)).all():
                        raise UnreadableInput(f"{p}: volume contains NaN or infinite values")
                got += n
            if gz and got == len(data):
                f.read(1)       # on to the stream's end, where gzip's CRC tells damaged voxels from sound ones
    except _GZIP_ERRORS as exc:
        raise UnreadableInput(f"{p}: file is truncated or corrupt ({exc})") from None
    if got < len(data):
        raise UnreadableInput(f"{p}: file is truncated ({got} of {len(data)} data bytes)")
    return data


def _affine(direction, spacing, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.asarray(direction).reshape(3, 3) @ np.diag(spacing)
    a[:3, 3] = origin
    return a
