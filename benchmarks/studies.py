"""The benchmark studies, made the same way by every benchmark script."""

from __future__ import annotations

from pathlib import Path

from runtime.shipped import DEFAULT_STUDY

THIN_SLICES, THIN_MM = 216, 0.625


def make_thin_study(path: Path) -> Path:
    """512 x 512 x 216 at 0.625 mm: the bundled study interpolated along z (a thin-slice stroke series)."""
    import SimpleITK as sitk
    img = sitk.ReadImage(str(DEFAULT_STUDY))
    size = list(img.GetSize())
    spacing = list(img.GetSpacing())
    out_spacing = [spacing[0], spacing[1], THIN_MM]
    centre_k = (size[2] - 1) / 2 - (THIN_SLICES - 1) / 2 * THIN_MM / spacing[2]
    origin = img.TransformContinuousIndexToPhysicalPoint((0, 0, centre_k))
    thin = sitk.Resample(img, [size[0], size[1], THIN_SLICES], sitk.Transform(), sitk.sitkLinear, origin, out_spacing,
                         img.GetDirection(), -1024.0, sitk.sitkInt16)
    sitk.WriteImage(thin, str(path), useCompression=True)
    return path


def make_thin_dicom(thin_nifti: Path, folder: Path) -> Path:
    """The thin-slice study as a scanner sends it: 216 classic CT files (what a PACS or the node hands
    the reader), written by the tests' DICOM writer."""
    import SimpleITK as sitk

    from tests.dicom_util import write_series
    img = sitk.ReadImage(str(thin_nifti))
    write_series(folder, sitk.GetArrayFromImage(img).astype(float), spacing=img.GetSpacing(), origin=img.GetOrigin(),
                 orientation=img.GetDirection()[0::3] + img.GetDirection()[1::3],
                 description="HEAD NCCT 0.625mm")
    return folder
