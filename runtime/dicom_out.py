"""DICOM results for a PACS or a scanner console, written with highdicom:

- SEG: the 20 region-sides and one "affected regions" segment, on the source
  series' own slices (each source plane sampled from the model-grid labels
  through its own position, orientation and pixel spacing, so the segments
  overlay the original images in any viewer, tilted or re-gridded series too);
- Comprehensive 3D SR (TID 1500): ASPECTS, symptomatic side, dichotomy, and per
  region and side the call, DA-Net probability, density difference and
  hypodense volume, with the models used;
- secondary-capture key images: the two report images, referencing the source
  slice each shows.

For DICOM input (a classic single-frame series) every output references the
source study, series and instances and keeps the patient's identity. A volume
input (NIfTI, MHA, NRRD, Enhanced CT) has no instances to reference: on request,
the input is first written as a CT series of its own with new UIDs and no patient
identity (`derived_series`, shipped beside the outputs as source_ct.zip), and the
outputs reference that series; the report says so.
"""

from __future__ import annotations

import io

import numpy as np

from . import __version__
from .regions import AFFECTED_RGB, REGIONS, SIDES, is_region, label_id
from .result import StudyResult

MANUFACTURER = "aspects-rt"
SERIES_NUMBERS = {"seg": 9901, "sr": 9902, "sc": 9903, "ct": 9900}
# What a PACS study browser lists each result series as (highdicom writes none: blank rows).
SERIES_DESCRIPTIONS = {"seg": "aspects-rt: ASPECTS regions", "sr": "aspects-rt: ASPECTS report",
                       "sc": "aspects-rt: ASPECTS key images", "ct": "aspects-rt: CT made from a volume file"}
DICOM_FILES = ("seg.dcm", "sr.dcm", "sc_ganglionic.dcm", "sc_supraganglionic.dcm")


# Type 2 attributes (present, may be empty) that outputs copy from their source; anonymised series
# often drop them altogether.
TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "ReferringPhysicianName", "StudyID", "AccessionNumber")


DERIVED_SERIES_FILE = "source_ct.zip"


def supports_dicom(result: StudyResult) -> bool:
    """The input was a DICOM series whose instances the outputs can reference."""
    return bool(result.source_images)


def derived_series(hu: np.ndarray, affine: np.ndarray, source: str) -> tuple[list, bytes]:
    """A volume input as a single-frame CT series with new study, series, frame-of-reference and
    instance UIDs and an empty patient identity: (headers without pixels, a zip of the files)."""
    import zipfile

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    row_dir, col_dir = affine[:3, 0] / spacing[0], affine[:3, 1] / spacing[1]
    stored = np.clip(np.rint(hu + 1024.0), 0, 65535).astype(np.uint16)
    headers, buf = [], io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(hu.shape[0]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset(f"CT{k + 1:04d}.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            for keyword in TYPE2_FROM_SOURCE:
                setattr(ds, keyword, "")
            ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", SERIES_NUMBERS["ct"], k + 1
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.SeriesDescription = SERIES_DESCRIPTIONS["ct"]
            ds.DerivationDescription = f"written by aspects-rt {__version__} from {source}; new UIDs, no identity"
            ds.Manufacturer, ds.PositionReferenceIndicator, ds.KVP = MANUFACTURER, "", ""
            ds.ImagePositionPatient = [_ds(v) for v in affine[:3, :3] @ [0.0, 0.0, float(k)] + affine[:3, 3]]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
            ds.SliceThickness = _ds(abs(np.cross(row_dir, col_dir) @ affine[:3, 2]))
            ds.Laterality = ""                   # type 2C: the head is not a paired structure
            ds.PatientPosition, ds.AcquisitionNumber = "", ""      # type 2C / 2: not known from a volume file
            ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.PixelData = stored[k].tobytes()
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            zf.writestr(f"CT{k + 1:04d}.dcm", out.getvalue())
            del ds.PixelData
            headers.append(ds)
    return headers, buf.getvalue()


def _ds(value: float) -> str:
    """A decimal string within DICOM's 16 characters (micrometre precision)."""
    return f"{float(value):.6f}".rstrip("0").rstrip(".")[:16] or "0"


def _sources(result: StudyResult, indices=None) -> list:
    """Copies of the source headers with every type 2 attribute the outputs copy present."""
    import copy
    out = []
    for i in (range(len(result.source_images)) if indices is None else indices):
        ds = copy.deepcopy(result.source_images[i])
        for keyword in TYPE2_FROM_SOURCE:
            if keyword not in ds:
                setattr(ds, keyword, "")
        out.append(ds)
    return out


def labels_on_source_planes(result: StudyResult) -> np.ndarray:
    """(slices, rows, cols) region labels (1..20; 0 elsewhere, other brain included) sampled at every
    source pixel centre (nearest model voxel). A source plane is an affine image of the model grid, so
    a pixel's voxel index is its plane's origin index plus row and column steps, and only the window
    of the plane that reaches the labelled voxels is computed (a 256-slice thin series took 8 s as one
    coordinate per pixel)."""
    grid = result.grid
    regions = np.where(is_region(result.labels), result.labels, 0).astype(np.uint8)
    labelled = np.argwhere(regions)[:, ::-1]                                  # (x, y, z) voxel indices
    first = result.source_images[0]
    out = np.zeros((len(result.source_images), int(first.Rows), int(first.Columns)), np.uint8)
    if not len(labelled):
        return out
    lo, hi = labelled.min(axis=0), labelled.max(axis=0)
    index_from_lps = np.diag([*(1 / np.array(grid.spacing)), 1.0]) @ np.linalg.inv(result.alignment.matrix)
    index_from_lps[:3, 3] -= np.array(grid.origin) / np.array(grid.spacing)
    linear, shift = index_from_lps[:3, :3], index_from_lps[:3, 3]
    for k, ds in enumerate(result.source_images):
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_sp, col_sp = (float(v) for v in ds.PixelSpacing)
        start = linear @ ipp + shift
        per_row, per_col = linear @ iop[3:] * row_sp, linear @ iop[:3] * col_sp     # voxels per pixel step
        window = _window(start, per_row, per_col, lo - 1, hi + 1, out.shape[1:])
        if window is None:
            continue
        rows, cols = window
        idx = np.rint(start + np.arange(rows.start, rows.stop)[:, None, None] * per_row
                      + np.arange(cols.start, cols.stop)[None, :, None] * per_col).astype(np.int64)
        inside = ((idx >= lo) & (idx <= hi)).all(axis=-1)
        out[k, rows, cols][inside] = regions[idx[inside, 2], idx[inside, 1], idx[inside, 0]]
    return out


def _window(start, per_row, per_col, lo, hi, shape) -> tuple[slice, slice] | None:
    """The rows and columns of a plane whose pixels (voxel index start + r * per_row + c * per_col) can
    fall in the box lo..hi: for each row, the columns inside are an interval, one per axis intersected."""
    n_rows, n_cols = shape
    r = np.arange(n_rows)
    first, last = np.zeros(n_rows), np.full(n_rows, n_cols - 1.0)
    for axis in range(3):
        base = start[axis] + r * per_row[axis]
        below, above = lo[axis] - base, hi[axis] - base          # per_col * c must land between these
        if abs(per_col[axis]) < 1e-12:
            last = np.where((below <= 0) & (above >= 0), last, -1.0)
            continue
        a, b = below / per_col[axis], above / per_col[axis]
        first, last = np.maximum(first, np.minimum(a, b)), np.minimum(last, np.maximum(a, b))
    rows = np.flatnonzero(last >= first)
    if not len(rows):
        return None
    c0, c1 = int(np.floor(first[rows].min())), int(np.ceil(last[rows].max()))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(max(c0, 0), min(c1, n_cols - 1) + 1)


def _algorithm(result: StudyResult):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(
        name="aspects-rt", version=__version__, family=codes.DCM.ArtificialIntelligence,
        parameters={m["role"]: f"{m['name']} {m['version']}" for m in result.models})


def make_seg(result: StudyResult):
    """The 20 region-sides as segments on the source slices; an affected region is coloured red and
    says so in its label and SegmentDescription (the SR carries the coded calls). One non-overlapping label map
    in, not a one-hot array with a 21st 'affected' segment over the regions: on a 256-slice thin
    series that took 20 s and 4.5 GB."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    calls = {(c.region, c.side): c for c in result.score.calls}
    segment_of = np.zeros(256, np.uint8)                  # region label -> segment number
    descriptions: list = []
    algorithm = _algorithm(result)
    for r, region in enumerate(REGIONS):
        for side in SIDES:
            number = len(descriptions) + 1
            segment_of[label_id(r, side)] = number
            call = calls.get((region.name, side))
            hit = call is not None and call.affected
            # Viewers list segments by label, and most never show the description: the call is in both.
            state = " (affected)" if hit else " (not assessed)" if call is None or not call.assessed else ""
            descriptions.append(hd.seg.SegmentDescription(
                segment_number=number, segment_label=f"{side} {region.name}{state}",
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=codes.SCT.Brain, algorithm_type="AUTOMATIC",
                algorithm_identification=algorithm, tracking_id=f"ASPECTS {side} {region.name}",
                tracking_uid=generate_uid(),
                display_color=hd.color.CIELabColor.from_rgb(*(AFFECTED_RGB if hit else region.rgb))))
            descriptions[-1].SegmentDescription = (
                "ASPECTS region: affected (early ischemic change)" if hit
                else "ASPECTS region: not assessed" if call is None or not call.assessed
                else "ASPECTS region: not affected")
    segments = segment_of[labels_on_source_planes(result)]
    keep = np.flatnonzero(segments.any(axis=(1, 2)))
    if not len(keep):
        keep = np.array([0])
    seg = hd.seg.Segmentation(
        source_images=_sources(result, keep), pixel_array=segments[keep],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=SERIES_NUMBERS["seg"], sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name="aspects-rt",
        software_versions=__version__, device_serial_number="none",
        content_description="ASPECTS regions, the affected ones marked", content_label="ASPECTS")
    seg.SeriesDescription = SERIES_DESCRIPTIONS["seg"]
    return seg


def make_sr(result: StudyResult, replaces: tuple = ()):
    """`replaces`: the SRs of earlier results for the same study that this one supersedes (a better
    series scored later). They go in its Predecessor Documents Sequence, so a PACS or viewer that
    honours it shows this result as the current one, not as a second ASPECTS beside the first."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    s = result.score
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), manufacturer_name=MANUFACTURER, model_name="aspects-rt",
            serial_number="none"))
    context = hd.sr.ObservationContext(observer_device_context=observer)
    region_groups = []
    for c in s.calls:
        tracking = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"ASPECTS {c.side} {c.region}")
        measurements = []
        if c.difference_hu is not None:
            measurements.append(hd.sr.Measurement(
                name=hd.sr.CodedConcept("ASPECTS-DHU", "99ASPECTSRT", "Density difference to mirror region"),
                value=float(c.difference_hu), unit=hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")))
        if c.hypodense_ml is not None:
            measurements.append(hd.sr.Measurement(
                name=hd.sr.CodedConcept("ASPECTS-HML", "99ASPECTSRT", "Volume hypodense to mirror"),
                value=float(c.hypodense_ml), unit=hd.sr.CodedConcept("ml", "UCUM", "milliliter")))
        if c.probability is not None:
            measurements.append(hd.sr.Measurement(
                name=hd.sr.CodedConcept("ASPECTS-P", "99ASPECTSRT", "DA-Net probability of ischemia"),
                value=float(c.probability), unit=hd.sr.CodedConcept("1", "UCUM", "no units")))
        # A region not assessed (outside the scan, not found) gets no call: "Early ischemic change: No"
        # would read as a normal region that nobody looked at.
        evaluations = [hd.sr.QualitativeEvaluation(
            name=hd.sr.CodedConcept("ASPECTS-ASSESSED", "99ASPECTSRT", "Region assessed"),
            value=codes.SCT.Yes if c.assessed else codes.SCT.No)]
        if c.assessed:
            evaluations += [
                hd.sr.QualitativeEvaluation(
                    name=hd.sr.CodedConcept("ASPECTS-AFF", "99ASPECTSRT", "Early ischemic change"),
                    value=codes.SCT.Yes if c.affected else codes.SCT.No),
                hd.sr.QualitativeEvaluation(      # runtime.score.borderline_calls
                    name=hd.sr.CodedConcept("ASPECTS-BL", "99ASPECTSRT", "Borderline call"),
                    value=codes.SCT.Yes if c.borderline else codes.SCT.No)]
        region_groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, measurements=measurements or None,
            qualitative_evaluations=evaluations,
            finding_type=codes.SCT.Brain, finding_sites=[hd.sr.FindingSite(
                anatomic_location=hd.sr.CodedConcept(f"ASPECTS-{c.region}", "99ASPECTSRT", f"{c.region}"),
                laterality=codes.SCT.Left if c.side == "left" else codes.SCT.Right)]))
    summary = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="ASPECTS study"),
        measurements=[
            hd.sr.Measurement(name=hd.sr.CodedConcept("ASPECTS", "99ASPECTSRT", "ASPECTS"), value=s.aspects,
                              unit=hd.sr.CodedConcept("{score}", "UCUM", "score")),
            hd.sr.Measurement(name=hd.sr.CodedConcept("ASPECTS-LO", "99ASPECTSRT",
                                                      "ASPECTS lowest, borderline and unassessed regions affected"),
                              value=s.lowest, unit=hd.sr.CodedConcept("{score}", "UCUM", "score")),
            hd.sr.Measurement(name=hd.sr.CodedConcept("ASPECTS-HI", "99ASPECTSRT",
                                                      "ASPECTS highest, borderline calls not affected"),
                              value=s.highest, unit=hd.sr.CodedConcept("{score}", "UCUM", "score")),
            hd.sr.Measurement(name=hd.sr.CodedConcept("ASPECTS-L", "99ASPECTSRT", "ASPECTS left hemisphere"),
                              value=s.left, unit=hd.sr.CodedConcept("{score}", "UCUM", "score")),
            hd.sr.Measurement(name=hd.sr.CodedConcept("ASPECTS-R", "99ASPECTSRT", "ASPECTS right hemisphere"),
                              value=s.right, unit=hd.sr.CodedConcept("{score}", "UCUM", "score")),
            hd.sr.Measurement(      # runtime.hyperdense: 0 when no focus
                name=hd.sr.CodedConcept("ASPECTS-HYPER-ML", "99ASPECTSRT", "Hyperdense tissue volume"),
                value=result.hyperdense.volume_ml,
                unit=hd.sr.CodedConcept("ml", "UCUM", "milliliter"))],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=hd.sr.CodedConcept("ASPECTS-GT6", "99ASPECTSRT", "ASPECTS above 6"),
                value=codes.SCT.Yes if s.above_cut else codes.SCT.No),
            hd.sr.QualitativeEvaluation(      # runtime.score.Score.dichotomy_firm
                name=hd.sr.CodedConcept("ASPECTS-GT6-FIRM", "99ASPECTSRT",
                                        "Dichotomy holds over borderline and unassessed regions"),
                value=codes.SCT.Yes if s.dichotomy_firm else codes.SCT.No),
            hd.sr.QualitativeEvaluation(      # the score counts ischaemic change only: look at the images first
                name=hd.sr.CodedConcept("ASPECTS-HYPER", "99ASPECTSRT",
                                        "Hyperdense tissue found, haemorrhage not excluded"),
                value=codes.SCT.Yes if result.hyperdense.foci else codes.SCT.No),
            hd.sr.QualitativeEvaluation(      # the key images name the regions near it
                name=hd.sr.CodedConcept("ASPECTS-METAL", "99ASPECTSRT", "Metal near the ASPECTS regions"),
                value=codes.SCT.Yes if result.hyperdense.metal is not None else codes.SCT.No),
            hd.sr.QualitativeEvaluation(
                name=hd.sr.CodedConcept("ASPECTS-CHILD", "99ASPECTSRT", "Patient younger than the models' adults"),
                value=codes.SCT.Yes if result.child_years is not None else codes.SCT.No),
            hd.sr.QualitativeEvaluation(
                name=hd.sr.CodedConcept("ASPECTS-CHECK", "99ASPECTSRT", "Region outlines to be checked (weak fit)"),
                value=codes.SCT.Yes if result.weak_fit else codes.SCT.No),
            hd.sr.QualitativeEvaluation(      # lossy, sharp kernel or named a contrast study: key images say which
                name=hd.sr.CodedConcept("ASPECTS-SOURCE", "99ASPECTSRT",
                                        "Source series limits the density comparison"),
                value=codes.SCT.Yes if result.source_limits else codes.SCT.No),
            hd.sr.QualitativeEvaluation(
                name=hd.sr.CodedConcept("ASPECTS-SIDE", "99ASPECTSRT", "Symptomatic hemisphere"),
                value=(codes.SCT.Left if s.symptomatic_side == "left" else codes.SCT.Right
                       if s.symptomatic_side == "right" else codes.SCT.No))],
        finding_type=codes.SCT.Brain,
        algorithm_id=hd.sr.AlgorithmIdentification(name="aspects-rt", version=__version__))
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=codes.LN.HeadCT,
        imaging_measurements=[summary, *region_groups],
        title=codes.DCM.ImagingMeasurementReport)
    sr = hd.sr.Comprehensive3DSR(
        evidence=_sources(result), content=report, series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBERS["sr"], sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, previous_versions=list(replaces) or None)
    sr.SeriesDescription = SERIES_DESCRIPTIONS["sr"]
    return sr


def source_slice_for(result: StudyResult, z: int) -> int | None:
    """The source image whose plane passes nearest the centre of model-grid slice z."""
    if not result.source_images:
        return None
    ny, nx = result.labels.shape[1:]
    centre = result.alignment.matrix @ result.grid.index_to_model @ np.array([(nx - 1) / 2, (ny - 1) / 2, z, 1.0])
    distances = []
    for ds in result.source_images:
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        distances.append(abs((centre[:3] - np.array([float(v) for v in ds.ImagePositionPatient])) @ normal))
    return int(np.argmin(distances))


def make_sc(result: StudyResult, rgb: np.ndarray, source_index: int, number: int, series_uid: str):
    """A key image as secondary capture; it references and names the source slice it shows."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    src = _sources(result, [source_index])[0]
    sc = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(rgb.astype(np.uint8)), photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", study_instance_uid=src.StudyInstanceUID, series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["sc"], sop_instance_uid=generate_uid(), instance_number=number,
        manufacturer=MANUFACTURER, patient_id=src.get("PatientID"), patient_name=src.get("PatientName"),
        patient_birth_date=src.get("PatientBirthDate"), patient_sex=src.get("PatientSex") or None,
        accession_number=src.get("AccessionNumber"), study_id=src.get("StudyID"),
        study_date=src.get("StudyDate"), study_time=src.get("StudyTime"),
        referring_physician_name=src.get("ReferringPhysicianName"), patient_orientation=("L", "P"))
    if "SpecificCharacterSet" in src:            # highdicom leaves it out: a name in UTF-8 came out as '??'
        sc.SpecificCharacterSet = src.SpecificCharacterSet
    item = Dataset()
    item.ReferencedSOPClassUID = src.SOPClassUID
    item.ReferencedSOPInstanceUID = src.SOPInstanceUID
    sc.SourceImageSequence = [item]              # the source slice this key image shows
    sc.DerivationDescription = "aspects-rt key image: region outlines, calls and hypodensity heat map"
    sc.Laterality = ""                           # type 2C: the head is not a paired structure
    sc.SeriesDescription = SERIES_DESCRIPTIONS["sc"]
    sc.BurnedInAnnotation = "YES"                # the patient's name, ID and study date are in the pixels
    sc.ImageComments = f"aspects-rt key image of source instance {src.get('InstanceNumber', '')} " \
                       f"(SOP {src.SOPInstanceUID})"
    return sc


def to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
