"""Write small DICOM CT series with pydicom, with the faults scanners really produce."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def edit_slices(folder: Path, edit, which: slice = slice(None)) -> None:
    """Change the headers of a written series in place (sorted file order): the faults of real exports."""
    import pydicom
    for f in sorted(folder.iterdir())[which]:
        ds = pydicom.dcmread(f)
        edit(ds)
        ds.save_as(f)


def strip_file_meta(path: Path) -> None:
    """Rewrite a file as a bare dataset: no preamble, no "DICM", no file meta (older archives, CD writers)."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.preamble = None
    del ds.file_meta
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)


def compress(ds, syntax: str) -> None:
    """Encode a dataset's pixels in a compressed transfer syntax, as a PACS stores them. pydicom encodes
    RLE and JPEG-LS; GDCM (through SimpleITK) the JPEG lossless and JPEG 2000 that pydicom cannot."""
    import tempfile

    import pydicom
    import SimpleITK as sitk
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1

    gdcm = {JPEGLosslessSV1: "JPEG", JPEG2000Lossless: "JPEG2000"}
    if syntax not in gdcm:
        ds.compress(syntax)
        return
    stored = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    fragments = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, plane in enumerate(stored):
            writer = sitk.ImageFileWriter()
            writer.SetImageIO("GDCMImageIO")
            writer.SetFileName(f"{tmp}/{k}.dcm")
            writer.SetUseCompression(True)
            writer.SetCompressor(gdcm[syntax])
            writer.Execute(sitk.GetImageFromArray(plane[None]))
            encoded = pydicom.dcmread(f"{tmp}/{k}.dcm")
            assert encoded.file_meta.TransferSyntaxUID == syntax
            fragments.append(next(generate_frames(encoded.PixelData, number_of_frames=1)))
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax


def write_series(folder: Path, hu: np.ndarray, spacing=(0.5, 0.5, 5.0), origin=(-64.0, -64.0, 0.0),
                 modality: str = "CT", slope: float = 1.0, intercept: float = -1024.0, tilt_deg: float = 0.0,
                 description: str = "HEAD NCCT 5mm", image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
                 orientation=(1, 0, 0, 0, 1, 0), series_uid: str | None = None, skip: tuple[int, ...] = (),
                 z_positions: list[float] | None = None, patient_id: str = "SYNTH",
                 study_uid: str | None = None) -> str:
    """hu: (z, y, x). Stored values = (hu - intercept) / slope as uint16. Returns the series UID.
    Series written into sibling folders share one study (as a scanner's export does) unless told."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid(entropy_srcs=[str(folder.parent.resolve()), patient_id])
    sx, sy, sz = spacing
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    shear = np.tan(np.radians(tilt_deg))
    for k in range(hu.shape[0]):
        if k in skip:
            continue
        z = z_positions[k] if z_positions is not None else k * sz
        # Gantry tilt: each slice's origin slides along the column direction as z grows.
        pos = np.array(origin) + normal * z + col * z * shear
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.ImageType = image_type
        ds.PatientID = patient_id
        ds.PatientName = f"{patient_id}^TEST"
        ds.AccessionNumber = "A" + patient_id[:15]
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame"])
        ds.StudyDate = "20261125"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{sy:.4f}", f"{sx:.4f}"]
        ds.SliceThickness = f"{sz:.3f}"
        ds.GantryDetectorTilt = f"{tilt_deg:.2f}"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        stored = np.clip(np.round((hu[k] - intercept) / slope), 0, 65535).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return series_uid


def head_phantom(shape=(16, 200, 160), spacing=(1.0, 1.0, 5.0)) -> np.ndarray:
    """A skull ellipse around brain-density tissue, air outside: passes the head checks."""
    nz, ny, nx = shape
    zz, yy, xx = np.mgrid[0:nz, 0:ny, 0:nx].astype(float)
    r = np.sqrt(((xx - nx / 2) * spacing[0] / 70) ** 2 + ((yy - ny / 2) * spacing[1] / 88) ** 2)
    hu = np.full(shape, -1000.0)
    hu[r < 1.0] = 800.0
    hu[r < 0.93] = 32.0
    hu[(r < 0.2) & (np.abs(xx - nx / 2) > 4)] = 8.0   # ventricles
    return hu


def write_enhanced(path: Path, hu: np.ndarray, spacing=(0.5, 0.5, 5.0), origin=(-64.0, -64.0, 0.0),
                   intercept: float = -1024.0) -> Path:
    """One Enhanced CT Image Storage file: every slice a frame, geometry in the functional groups."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    enhanced_ct = "1.2.840.10008.5.1.4.1.1.2.1"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = enhanced_ct
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = enhanced_ct, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality, ds.PatientID, ds.SeriesDescription = "CT", "ENHANCED", "HEAD NCCT ENHANCED"
    ds.ImageType = "ORIGINAL\\PRIMARY\\AXIAL"
    sx, sy, sz = spacing

    def item(**values) -> Dataset:
        d = Dataset()
        for k, v in values.items():
            setattr(d, k, v)
        return d

    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])])
    shared.PixelMeasuresSequence = Sequence([item(PixelSpacing=[sy, sx], SliceThickness=sz)])
    shared.PixelValueTransformationSequence = Sequence([item(RescaleIntercept=intercept, RescaleSlope=1,
                                                             RescaleType="HU")])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence([
        item(PlanePositionSequence=Sequence([item(ImagePositionPatient=[origin[0], origin[1], origin[2] + k * sz])]))
        for k in range(hu.shape[0])])
    ds.NumberOfFrames = hu.shape[0]
    ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.clip(np.round(hu - intercept), 0, 65535).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
