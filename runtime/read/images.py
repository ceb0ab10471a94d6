"""A DICOM file's image planes: each classic CT file, or each frame of an enhanced CT, with its
geometry, identity and contrast record read from the header; its pixels decoded to HU on demand."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import UnreadableInput
from .study import first_line

# Pixel values scanners store outside the scan circle: not Hounsfield units, and no reason to refuse.
PADDING_BELOW_HU = -1024.0
LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                  "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"}
CT_IMAGE_SOPS = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}
# The Contrast/Bolus modules are present only when contrast was given, but some scanners write an empty
# or "none" agent on every series: those values mean no contrast.
NO_AGENT = {"", "-", "C-", "NONE", "NO", "N", "NA", "N/A", "NIL", "0", "NO CONTRAST", "NON CONTRAST", "NONCONTRAST",
            "NON", "NC", "NON CON", "WITHOUT CONTRAST", "W/O", "W/O CONTRAST", "NOT APPLIED", "NOT USED", "PLAIN",
            "NATIVE", "UNENHANCED", "NON ENHANCED"}
IDENTITY_TAGS = ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber",
                 "FrameOfReferenceUID", "StudyDate", "SeriesNumber", "PatientAge", "PatientBirthDate")


@dataclass(frozen=True)
class Plane:
    """One image plane: a classic CT file, or one frame of an enhanced multi-frame file."""
    path: str
    frame: int | None
    identity: tuple[tuple[str, str], ...]     # patient / study / series identity (see IDENTITY_TAGS)
    sop_uid: str
    modality: str
    description: str
    image_type: str
    kernel: str                # ConvolutionKernel, "" when not given
    body_part: str             # BodyPartExamined, "" when not given
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


@dataclass(frozen=True)
class Refused:
    """A file that is a DICOM image but cannot be used, and why."""
    path: str
    series_uid: str | None
    reason: str


def read_planes(path: str) -> list[Plane] | Refused | None:
    """The planes of one file; None when it is not a DICOM image at all (a README, a DICOMDIR, an SR)."""
    from pydicom.errors import InvalidDicomError

    try:
        ds = open_dicom(path, stop_before_pixels=True)
    except InvalidDicomError:
        return Refused(path, None, "damaged DICOM file") if is_dicom_file(path) else None
    except Exception as exc:  # pydicom raises many types on a cut-off or corrupt file
        if is_dicom_file(path):
            return Refused(path, None, f"damaged DICOM file ({type(exc).__name__})")
        return None
    series_uid = str(ds.get("SeriesInstanceUID", "")) or None
    if "Rows" not in ds or "Columns" not in ds:
        if str(ds.get("SOPClassUID", "")) in CT_IMAGE_SOPS:
            return Refused(path, series_uid, "damaged DICOM file (a CT image with no Rows/Columns: cut off?)")
        return None                          # not an image: DICOMDIR, SR, presentation state...
    if str(ds.get("SamplesPerPixel", 1)) != "1":
        return Refused(path, series_uid, f"a colour image ({ds.get('PhotometricInterpretation', '?')}), "
                                          "not CT densities")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            return _enhanced_planes(path, ds, frames)
        missing = [name for name, tag in (("ImagePositionPatient", "0020,0032"),
                                          ("ImageOrientationPatient", "0020,0037"),
                                          ("PixelSpacing", "0028,0030")) if name not in ds]
        if missing:
            return Refused(path, series_uid, "missing " + ", ".join(missing))
        return [_plane(path, None, ds, ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing,
                       float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))]
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        return Refused(path, series_uid, f"unreadable geometry ({exc})")


def open_dicom(path: str, stop_before_pixels: bool = False):
    """pydicom's reader, also for a dataset stored bare, without the preamble and file meta header
    (older archives and CD writers do this): read as implicit VR little endian when it starts like one."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ImplicitVRLittleEndian

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        with open(path, "rb") as f:
            if f.read(2) != b"\x08\x00":        # a bare dataset starts with group 0008 (identification)
                raise
    ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    ds.file_meta.setdefault("TransferSyntaxUID", ImplicitVRLittleEndian)
    return ds


def is_dicom_file(path: str | Path) -> bool:
    """The DICOM file-format marker, whatever the file's name."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _plane(path, frame, ds, position, orientation, spacing, slope, intercept) -> Plane:
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
    return Plane(path=path, frame=frame,
                  identity=tuple((t, str(ds.get(t, "") or "")) for t in IDENTITY_TAGS),
                  sop_uid=str(ds.get("SOPInstanceUID", "")), modality=str(ds.get("Modality", "")).upper(),
                  description=str(ds.get("SeriesDescription", "")),
                  body_part=_text(ds.get("BodyPartExamined")),
                  kernel=_text(ds.get("ConvolutionKernel")),
                  image_type=_text(ds.get("ImageType")),
                  rows=int(ds.Rows), cols=int(ds.Columns), position=pos,
                  row_dir=np.array(orient[:3]), col_dir=np.array(orient[3:]), pixel_spacing=(sp[0], sp[1]),
                  gantry_tilt=float(ds.get("GantryDetectorTilt", 0) or 0), slope=slope, intercept=intercept,
                  padding=None if padding is None else float(padding), lossy=lossy,
                  contrast_agent=_contrast_agent(ds), header=ds)


def _text(value) -> str:
    """A code string of one or several values (ImageType, ConvolutionKernel) as "A\\B", upper case."""
    if not value:
        return ""
    return (value if isinstance(value, str) else "\\".join(str(v) for v in value)).upper()


def _contrast_agent(ds) -> str:
    """Classic CT names the agent in ContrastBolusAgent, enhanced CT in ContrastBolusAgentSequence."""
    given = [str(ds.get("ContrastBolusAgent", "") or "")]
    given += [str(item.get("CodeMeaning", "") or "a coded agent") for item in ds.get("ContrastBolusAgentSequence", [])]
    return named_agents(given)


def named_agents(values: list[str]) -> str:
    """The agents a header names, "" when its values only say "none" (or nothing)."""
    def says_none(value: str) -> bool:
        raw = value.strip().upper()
        return raw in NO_AGENT or " ".join(raw.replace("-", " ").replace("_", " ").split()) in NO_AGENT

    return ", ".join(v.strip() for v in values if not says_none(v))


def _enhanced_planes(path: str, ds, frames: int) -> list[Plane]:
    """Enhanced CT: geometry and rescale per frame, from the per-frame or the shared functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    if len(per_frame) != frames:
        raise ValueError(f"{frames} frames but {len(per_frame)} per-frame functional groups")

    def item(group, seq: str):
        found = _frame_sequence(group, shared, seq)
        if found is None:
            raise ValueError(f"no {seq} for a frame")
        return found[0]

    planes = []
    for i, group in enumerate(per_frame):
        transforms = _frame_sequence(group, shared, "PixelValueTransformationSequence")
        transform = transforms[0] if transforms is not None else None
        slope = float(getattr(transform, "RescaleSlope", 1) or 1) if transform else float(ds.get("RescaleSlope", 1))
        intercept = float(getattr(transform, "RescaleIntercept", 0) or 0) if transform else \
            float(ds.get("RescaleIntercept", 0))
        plane = _plane(path, i, ds, item(group, "PlanePositionSequence").ImagePositionPatient,
                       item(group, "PlaneOrientationSequence").ImageOrientationPatient,
                       item(group, "PixelMeasuresSequence").PixelSpacing, slope, intercept)
        usage = _frame_sequence(group, shared, "ContrastBolusUsageSequence")
        if plane.contrast_agent and not _contrast_in_frame(usage):
            plane = replace(plane, contrast_agent="")
        planes.append(plane)
    return planes


def _frame_sequence(group, shared, seq: str):
    """A functional group sequence for one frame: its own, else the shared one; None when neither has it."""
    for source in (group, shared):
        if source is not None and seq in source:
            return source[seq].value
    return None


def _contrast_in_frame(usage) -> bool:
    """An enhanced CT names its agents once; each frame says whether it was given yet (a pre-contrast
    frame of a contrast exam says NO). Without that record every frame counts as given."""
    if usage is None:
        return True
    return any(str(u.get("ContrastBolusAgentAdministered", "YES")).upper() != "NO" and
               str(u.get("ContrastBolusAgentPhase", "")).upper() != "PRE_CONTRAST" for u in usage)


def planes_hu(slices: list[Plane]) -> np.ndarray:
    """The slices' planes in HU, in the order given (all of one size: runtime.read.dicom checks). A
    multi-frame file is decoded once for all its frames; a classic file's plane is let go as soon as
    it is in the volume, so a thin series is held once, not twice."""
    hu = np.empty((len(slices), slices[0].rows, slices[0].cols), np.float32)
    frames: dict[str, np.ndarray] = {}
    for i, h in enumerate(slices):
        if h.frame is None:
            stored = _stored_values(h)[0]
        else:
            if h.path not in frames:
                frames[h.path] = _stored_values(h)
            stored = frames[h.path][h.frame]
        hu[i] = _to_hu(stored, h)
    return hu


def _stored_values(h: Plane) -> np.ndarray:
    """Every frame of h's file as stored, (frames, rows, cols), before any rescale."""
    try:
        ds = open_dicom(h.path)
        try:
            # pydicom checks that every pixel byte is there (GDCM zero-fills a cut-off file), and
            # decodes RLE, JPEG-LS, JPEG 2000 and baseline JPEG with what is installed.
            stored = ds.pixel_array
        except (NotImplementedError, RuntimeError):
            if not ds.file_meta.TransferSyntaxUID.is_compressed:
                raise
            stored = _gdcm_stored_values(ds)      # JPEG lossless: no permissive decoder for pydicom
        return np.asarray(stored, dtype=np.float32).reshape(-1, h.rows, h.cols)
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


def _to_hu(stored: np.ndarray, h: Plane) -> np.ndarray:
    """One plane in HU; scanner padding (PixelPaddingValue, or values below air) becomes air."""
    hu = stored * h.slope + h.intercept
    if h.padding is not None:
        hu[np.isclose(stored, h.padding)] = PADDING_BELOW_HU
    return np.maximum(hu, PADDING_BELOW_HU)
