"""Reading: DICOM series handling and the refusal of everything that is not a scoreable head CT."""

from __future__ import annotations

import gzip
import tracemalloc

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from runtime import errors
from runtime.read import read_study
from tests.conftest import SHARED_DATA
from tests.dicom_util import compress, edit_slices, head_phantom, strip_file_meta, write_enhanced, write_series

SPACING = (1.0, 1.0, 5.0)


def _nifti(path, hu, spacing=SPACING):
    img = sitk.GetImageFromArray(hu.astype(np.int16))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def _peak_bytes(run):
    """(run's result, the most memory it held at once): tracemalloc sees numpy's buffers, so the
    figure is the same on every machine, not a timing."""
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_dicom_series_is_held_once_while_it_is_read(tmp_path):
    """A 0.625 mm series is 216 planes of 1 MB in HU: the reader once kept every decoded plane, then
    every HU plane, then stacked them, three copies at its peak (800 MB for such a series on a
    console that also reconstructs)."""
    write_series(tmp_path / "s", head_phantom(shape=(24, 256, 256), spacing=(0.5, 0.5, 5.0)), spacing=(0.5, 0.5, 5.0))
    study, peak = _peak_bytes(lambda: read_study(tmp_path / "s"))
    assert peak < 2.5 * study.hu.nbytes, f"peak {peak / study.hu.nbytes:.2f} x the volume"


def test_the_checks_of_a_study_take_a_small_part_of_its_memory():
    """validate_study's tissue masks are made a few slices at a time; whole-study masks took 0.75x
    the volume again."""
    from runtime.read import Study, validate_study
    hu = head_phantom(shape=(64, 200, 160)).astype(np.float32)
    _, peak = _peak_bytes(lambda: validate_study(Study(hu=hu, affine=np.diag([*SPACING, 1.0]), source="phantom")))
    assert peak < 0.25 * hu.nbytes, f"peak {peak / hu.nbytes:.2f} x the volume"


def test_dicom_rescale_sorting_and_geometry(tmp_path):
    hu = head_phantom()
    hu[3, 10, 20] = 1234.0                   # a marker to check slice order and orientation
    write_series(tmp_path / "s", hu, spacing=SPACING, slope=0.5, intercept=-1024.0)
    # Shuffle file names so directory order is not slice order.
    files = sorted((tmp_path / "s").iterdir())
    for i, f in enumerate(files):
        f.rename(f.with_name(f"x{(i * 7) % len(files):03d}_{f.name}"))
    study = read_study(tmp_path / "s")
    assert study.hu.shape == hu.shape
    assert study.hu[3, 10, 20] == pytest.approx(1234.0, abs=0.5)
    assert np.abs(study.hu - hu).max() <= 0.5           # slope 0.5 quantises to half-HU steps
    np.testing.assert_allclose(study.spacing, SPACING, atol=1e-6)
    assert study.affine[2, 3] == pytest.approx(0.0)      # first slice is the lowest
    assert study.metadata["gantry_tilt_deg"] == 0


def test_dicom_picks_axial_ct_among_several_series(tmp_path):
    hu = head_phantom()
    write_series(tmp_path / "f" / "loc", hu[:2], image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    write_series(tmp_path / "f" / "bone", hu[::2], description="HEAD BONE 10mm", spacing=(1, 1, 10.0))
    write_series(tmp_path / "f" / "mr", hu, modality="MR")
    uid = write_series(tmp_path / "f" / "nc", hu, description="HEAD NCCT 5mm")
    study = read_study(tmp_path / "f")
    assert study.metadata["series_uid"] == uid
    assert any("series" in w for w in study.warnings)


@pytest.mark.parametrize("sharp", ["BONEPLUS", "H70h", "Hr64h", "J70h"])
def test_dicom_soft_kernel_is_chosen_over_a_thin_sharp_one(tmp_path, sharp):
    """Only the kernel tells a thin bone reconstruction from the soft one (same description)."""
    hu = head_phantom()
    soft = write_series(tmp_path / "s" / "soft", hu, description="HEAD")
    edit_slices(tmp_path / "s" / "soft", lambda ds: setattr(ds, "ConvolutionKernel", ["Hr38h", "3"]))
    write_series(tmp_path / "s" / "sharp", np.repeat(hu, 4, axis=0), spacing=(1, 1, 1.25), description="HEAD")
    edit_slices(tmp_path / "s" / "sharp", lambda ds: setattr(ds, "ConvolutionKernel", sharp))
    assert read_study(tmp_path / "s").metadata["series_uid"] == soft
    study = read_study(tmp_path / "s" / "sharp")          # alone, it is scored, with a warning
    assert any(f"kernel '{sharp.upper()}'" in w and "noisier" in w for w in study.warnings)


def test_dicom_trauma_study_scores_the_head_not_the_longer_body_series(tmp_path):
    hu = head_phantom()
    head = write_series(tmp_path / "s" / "head", hu, description="HEAD 5mm")
    edit_slices(tmp_path / "s" / "head", lambda ds: setattr(ds, "BodyPartExamined", "HEAD"))
    write_series(tmp_path / "s" / "chest", np.repeat(hu, 4, axis=0), spacing=(1, 1, 1.25), description="TRAUMA 1.25")
    edit_slices(tmp_path / "s" / "chest", lambda ds: setattr(ds, "BodyPartExamined", "CHEST"))
    study = read_study(tmp_path / "s")
    assert study.metadata["series_uid"] == head
    assert any("'TRAUMA 1.25' (body part CHEST)" in w for w in study.warnings)


def test_a_series_declared_of_another_body_part_is_refused_before_any_compute(tmp_path):
    """A broad routing rule sends every CT to the node: a chest CT went through alignment and skull
    stripping before 'not a head' (exit 8), and its images were kept to be looked into. Refused now
    from its header; a head named in another language, or a whole-body scan, never is."""
    from runtime.errors import NotAHeadScan
    from runtime.read.series import declared_not_head
    write_series(tmp_path / "chest", head_phantom(), description="THORAX 5mm")
    edit_slices(tmp_path / "chest", lambda ds: setattr(ds, "BodyPartExamined", "CHEST"))
    with pytest.raises(NotAHeadScan, match=r"no head CT series; .*\(BodyPartExamined CHEST\)"):
        read_study(tmp_path / "chest")
    assert NotAHeadScan.exit_code == 8
    for part in ("CHEST", "ABD_PELVIS", "LSPINE", "NECK", "Thorax"):
        assert declared_not_head(part), part
    for part in ("", "HEAD", "BRAIN", "HEADNECK", "HEAD_NECK", "WHOLEBODY", "KOPF", "SCHAEDEL", "CABEZA", "CRANE"):
        assert not declared_not_head(part), part
    write_series(tmp_path / "kopf", head_phantom())
    edit_slices(tmp_path / "kopf", lambda ds: setattr(ds, "BodyPartExamined", "KOPF"))
    assert read_study(tmp_path / "kopf").metadata["modality"] == "CT"


def test_dicom_two_part_protocol_scores_the_cerebrum_not_the_thinner_posterior_fossa(tmp_path):
    """Some protocols scan the posterior fossa as its own thin series: more slices, but below the
    levels ASPECTS is read on. Alone, such a partial series is scored, and the report says why regions
    are missing."""
    hu = head_phantom()
    cerebrum = write_series(tmp_path / "s" / "cerebrum", hu, description="HEAD 5mm")
    write_series(tmp_path / "s" / "fossa", np.repeat(hu[:12], 4, axis=0), spacing=(1, 1, 1.25),
                 description="POST FOSSA 1.25mm")
    study = read_study(tmp_path / "s")
    assert study.metadata["series_uid"] == cerebrum and study.metadata["series_criteria"]["covers the head"]
    assert any("'POST FOSSA 1.25mm' (covers 60 mm of the head only)" in w for w in study.warnings)
    assert not any("cannot be assessed" in w for w in study.warnings)
    alone = read_study(tmp_path / "s" / "fossa")
    assert not alone.metadata["series_criteria"]["covers the head"]
    assert any(w.startswith("the series covers 60 mm from foot to head") for w in alone.warnings)


def _agent(value: str):
    return lambda ds: setattr(ds, "ContrastBolusAgent", value)


def test_dicom_stroke_protocol_scores_the_non_contrast_series(tmp_path):
    """A scanner sends NCCT, CTA and perfusion as one study; the contrast series have more images."""
    hu = head_phantom()
    nc = write_series(tmp_path / "s" / "ncct", hu, description="CT HEAD W/O CONTRAST")
    write_series(tmp_path / "s" / "cta", np.repeat(hu, 4, axis=0), spacing=(1, 1, 1.25), description="HEAD 1.25mm")
    edit_slices(tmp_path / "s" / "cta", _agent("Omnipaque 350"))
    # Perfusion: eight positions, each scanned at five time points (no agent in the header).
    write_series(tmp_path / "s" / "ctp", np.concatenate([hu[4:12]] * 5), description="BRAIN 5mm",
                 z_positions=[20 + 5 * (k % 8) for k in range(40)])
    write_series(tmp_path / "s" / "named", np.repeat(hu, 2, axis=0), spacing=(1, 1, 2.5), description="CTA HEAD")
    study = read_study(tmp_path / "s")
    assert study.metadata["series_uid"] == nc
    said = next(w for w in study.warnings if w.startswith("folder holds 4 series"))
    assert said.startswith("folder holds 4 series; scored series 'CT HEAD W/O CONTRAST'; passed over: ")
    for why in ("'HEAD 1.25mm' (contrast agent 'Omnipaque 350')", "'BRAIN 5mm' (positions repeated",
                "'CTA HEAD' (described as a contrast study)"):
        assert why in said


@pytest.mark.parametrize("value", ["", "NONE", "No contrast", "non-contrast", "N/A", "C-", "Plain"])
def test_dicom_agent_that_says_none_is_no_contrast(tmp_path, value):
    write_series(tmp_path / "s", head_phantom())
    edit_slices(tmp_path / "s", _agent(value))
    assert read_study(tmp_path / "s").hu.shape[0] == 16


@pytest.mark.parametrize("value", ["Iohexol", "APPLIED", "non-ionic 300"])
def test_dicom_contrast_series_alone_is_refused(tmp_path, value):
    write_series(tmp_path / "s", head_phantom(), description="HEAD 5mm")
    edit_slices(tmp_path / "s", _agent(value), slice(3, 4))      # one image is enough to say so
    with pytest.raises(errors.WrongModality, match=f"with contrast \\(ContrastBolusAgent '{value}'\\)"):
        read_study(tmp_path / "s")


@pytest.mark.parametrize("administered", [None, "YES", "NO"])
def test_enhanced_ct_with_a_coded_contrast_agent(tmp_path, administered):
    """Refused, unless every frame records that the agent was not yet given (a pre-contrast scan)."""
    from pydicom.dataset import Dataset

    path = write_enhanced(tmp_path / "e.dcm", head_phantom())
    ds = pydicom.dcmread(path)
    agent = Dataset()
    agent.CodeValue, agent.CodingSchemeDesignator, agent.CodeMeaning = "C-B0322", "SRT", "Iohexol"
    agent.ContrastBolusAgentNumber = 1
    ds.ContrastBolusAgentSequence = [agent]
    if administered is not None:
        usage = Dataset()
        usage.ContrastBolusAgentNumber, usage.ContrastBolusAgentAdministered = 1, administered
        for group in ds.PerFrameFunctionalGroupsSequence:
            group.ContrastBolusUsageSequence = [usage]
    ds.save_as(path)
    if administered == "NO":
        assert read_study(path).hu.shape[0] == 16
    else:
        with pytest.raises(errors.WrongModality, match="'Iohexol'"):
            read_study(path)


def test_dicom_series_named_as_a_contrast_study_is_scored_with_a_warning(tmp_path):
    """A name is not proof (a protocol's plain scan can carry it): read, and the report says to check."""
    write_series(tmp_path / "s", head_phantom(), description="STROKE CTA PROTOCOL - PLAIN")
    study = read_study(tmp_path / "s")
    assert any("names a contrast study" in w for w in study.warnings)
    assert study.metadata["source_limits"] == ["named a contrast study"]


def test_a_lossy_sharp_kernel_series_records_both_limits_by_name(tmp_path):
    """The key images and the SR name them (runtime.report, runtime.dicom_out); report.json says each in full."""
    write_series(tmp_path / "s", head_phantom(), description="HEAD 5mm BONE")
    edit_slices(tmp_path / "s", lambda ds: setattr(ds, "LossyImageCompression", "01"), slice(0, 1))
    study = read_study(tmp_path / "s")
    assert study.metadata["source_limits"] == ["lossy-compressed", "sharp kernel"]
    assert [w.split(" (")[0] for w in study.warnings] == ["the series is lossy-compressed",
                                                          "the series is a sharp-kernel or projected reconstruction"]
    write_series(tmp_path / "plain", head_phantom())
    plain = read_study(tmp_path / "plain")
    assert plain.metadata["source_limits"] == [] and plain.warnings == ()


COMPRESSED = ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90"]


@pytest.mark.parametrize("syntax", COMPRESSED, ids=["rle", "jpeg-ls", "jpeg-lossless", "jpeg2000"])
@pytest.mark.parametrize("layout", ["series", "enhanced"])
def test_compressed_dicom_reads_the_same_hu(tmp_path, syntax, layout):
    """The node takes every one of these syntaxes; an enhanced CT in JPEG lossless was rescaled twice."""

    hu = head_phantom()
    hu[3, 50, 60] = 1234.0
    if layout == "series":
        write_series(tmp_path / "s", hu, slope=0.5, intercept=-1000.0)
        edit_slices(tmp_path / "s", lambda ds: compress(ds, syntax))
        path = tmp_path / "s"
    else:
        path = write_enhanced(tmp_path / "e.dcm", hu)
        ds = pydicom.dcmread(path)
        compress(ds, syntax)
        ds.save_as(path)
    np.testing.assert_array_equal(read_study(path).hu, np.maximum(hu, -1024.0))


def test_enhanced_ct_with_a_rescale_per_frame(tmp_path):
    """Each frame's own intercept is applied, also where GDCM decodes (it would apply one to all)."""
    from pydicom.dataset import Dataset

    hu = head_phantom()
    path = write_enhanced(tmp_path / "e.dcm", hu)
    ds = pydicom.dcmread(path)
    intercepts = [-1024.0 if k % 2 else -2048.0 for k in range(hu.shape[0])]
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    for group, intercept in zip(ds.PerFrameFunctionalGroupsSequence, intercepts):
        transform = Dataset()
        transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = intercept, 1, "HU"
        group.PixelValueTransformationSequence = [transform]
    ds.PixelData = np.stack([h - c for h, c in zip(hu, intercepts)]).astype(np.uint16).tobytes()
    compress(ds, "1.2.840.10008.1.2.4.70")
    ds.save_as(path)
    np.testing.assert_array_equal(read_study(path).hu, hu)


def test_two_studies_on_one_disc_are_named_with_their_folders(tmp_path):
    """An outside hospital's CD holds today's study and a prior one: say where each is."""
    write_series(tmp_path / "cd" / "DICOM" / "ST01", head_phantom(), patient_id="P1")
    write_series(tmp_path / "cd" / "DICOM" / "ST02", head_phantom(), patient_id="P1", study_uid="1.2.3.4")
    with pytest.raises(errors.InconsistentSeries, match=r"2 studies .* in DICOM/ST01;.* 1\.2\.3\.4 of 20261125, "
                                                        r"in DICOM/ST02\); give one study's folder"):
        read_study(tmp_path / "cd")


def test_a_cds_dicomdir_reads_the_disc(tmp_path):
    """Given the DICOMDIR itself (what a user clicks on a CD), the study is the files beside it."""
    from pydicom.fileset import FileSet

    uid = write_series(tmp_path / "cd" / "DICOM", head_phantom())

    def for_the_index(ds):          # what a DICOMDIR's study and series records require
        ds.StudyTime, ds.StudyID, ds.SeriesNumber = "120000", "1", 2

    edit_slices(tmp_path / "cd" / "DICOM", for_the_index)
    fs = FileSet()
    for f in sorted((tmp_path / "cd" / "DICOM").iterdir()):
        fs.add(f)
    fs.write(tmp_path / "disc")
    assert read_study(tmp_path / "disc" / "DICOMDIR").metadata["series_uid"] == uid


def test_zip_errors_name_the_archive_and_its_member(tmp_path):
    import zipfile

    write_series(tmp_path / "s", head_phantom())
    cut = sorted((tmp_path / "s").iterdir())[3]
    cut.write_bytes(cut.read_bytes()[:600])
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as z:
        for f in sorted((tmp_path / "s").iterdir()):
            z.write(f, f"CD/{f.name}")
    with pytest.raises(errors.UnreadableInput) as refused:
        read_study(tmp_path / "study.zip")
    assert str(refused.value).startswith(f"{tmp_path / 'study.zip'}:CD/{cut.name}: damaged DICOM file")
    assert "aspects-zip-" not in str(refused.value)       # never the private folder it was unpacked into


def test_a_file_copied_twice_into_the_folder_is_read_once(tmp_path):
    import shutil

    write_series(tmp_path / "s", head_phantom())
    shutil.copy(sorted((tmp_path / "s").iterdir())[3], tmp_path / "s" / "IM0003 (copy).dcm")
    study = read_study(tmp_path / "s")
    assert study.hu.shape[0] == 16
    assert any("1 image(s) in the folder twice" in w for w in study.warnings)


def test_one_sop_uid_for_every_slice_is_still_a_series(tmp_path):
    """A careless anonymiser's output: the positions still tell the slices apart."""
    write_series(tmp_path / "s", head_phantom())
    edit_slices(tmp_path / "s", lambda ds: setattr(ds, "SOPInstanceUID", "1.2.3"))
    assert read_study(tmp_path / "s").hu.shape[0] == 16


def test_a_series_split_into_one_series_per_file_is_named_as_such(tmp_path):
    """It read "1 slice(s); at least 8 are needed", pointing nowhere near the cause."""
    write_series(tmp_path / "s", head_phantom())
    edit_slices(tmp_path / "s", lambda ds: setattr(ds, "SeriesInstanceUID", pydicom.uid.generate_uid()))
    with pytest.raises(errors.InconsistentSeries, match="16 CT images each filed as a series of its own"):
        read_study(tmp_path / "s")


@pytest.mark.parametrize("second_acquisition, words", [
    (True, r"3 position\(s\) hold two or more images \(z = 20.0 to 30.0 mm .*acquisitions 1, 2 filed as one series"),
    (False, r"3 position\(s\) hold two or more images .*duplicated images or two series under one SeriesInstanceUID"),
])
def test_a_part_scanned_twice_in_one_series_is_refused_saying_where(tmp_path, second_acquisition, words):
    """A part rescanned after the patient moved, filed in the same series: which images to read is the
    reader's call, so the refusal says where and which acquisitions (it said only "duplicated or mixed")."""
    hu = head_phantom()
    write_series(tmp_path / "s", np.concatenate([hu, hu[4:7]]), z_positions=[*range(0, 80, 5), 20, 25, 30])
    edit_slices(tmp_path / "s", lambda ds: setattr(ds, "AcquisitionNumber", 1))
    if second_acquisition:
        edit_slices(tmp_path / "s", lambda ds: setattr(ds, "AcquisitionNumber", 2), slice(16, None))
    with pytest.raises(errors.InconsistentSeries, match=words):
        read_study(tmp_path / "s")


def test_dicom_files_stored_without_preamble_and_file_meta(tmp_path):
    write_series(tmp_path / "s", head_phantom(), slope=0.5, intercept=-1000.0)
    for f in (tmp_path / "s").iterdir():
        strip_file_meta(f)
    (tmp_path / "s" / "notes.bin").write_bytes(b"\x08\x00 not a dataset at all")
    np.testing.assert_array_equal(read_study(tmp_path / "s").hu, np.maximum(head_phantom(), -1024.0))


DCM2NIIX_SIDECAR = SHARED_DATA / "dicom" / "dcm2niix_ref" / "1A_TRAUMA_PLAIN_HEAD_DM_Head_201.json"


@pytest.mark.parametrize("words, error, said, limits", [
    ({"Modality": "CT", "ContrastBolusAgent": "Omnipaque 350"}, errors.WrongModality, "names a contrast agent", None),
    ({"Modality": "MR"}, errors.WrongModality, "says modality MR", None),
    ({"ContrastBolusAgent": "None", "SeriesDescription": "CTA HEAD", "ConvolutionKernel": ["BONEPLUS"],
      "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]}, None, ["names a contrast study", "kernel 'BONEPLUS'"],
     ["sharp kernel", "named a contrast study"]),
    ("not json", None, ["could not be read"], []),
])
def test_volume_with_a_dcm2niix_sidecar_is_checked_like_its_series(tmp_path, words, error, said, limits):
    import json

    path = _nifti(tmp_path / "head.nii.gz", head_phantom())
    (tmp_path / "head.json").write_text(words if isinstance(words, str) else json.dumps(words))
    if error is not None:
        with pytest.raises(error, match=said):
            read_study(path)
    else:
        study = read_study(path)
        assert all(w in " ".join(study.warnings) for w in said)
        assert study.metadata["source_limits"] == limits


@pytest.mark.skipif(not DCM2NIIX_SIDECAR.exists(), reason=f"needs {DCM2NIIX_SIDECAR} (shared data, not shipped)")
def test_a_real_dcm2niix_sidecar_of_a_plain_head_ct_adds_nothing(tmp_path):
    import shutil

    path = _nifti(tmp_path / "head.nii.gz", head_phantom())
    shutil.copy(DCM2NIIX_SIDECAR, tmp_path / "head.json")      # Philips "STD BRAIN 5MM", kernel UB
    assert read_study(path).warnings == ()


def test_dicom_missing_slice_is_refused(tmp_path):
    write_series(tmp_path / "s", head_phantom(), skip=(7,))
    with pytest.raises(errors.InconsistentSeries, match="missing"):
        read_study(tmp_path / "s")


def _colour(ds):
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.zeros((ds.Rows, ds.Columns, 3), np.uint8).tobytes()


@pytest.mark.parametrize("edit, which, error, words", [
    # Half the slices with another pixel size: the affine would give them the first slice's.
    (lambda ds: setattr(ds, "PixelSpacing", ["0.8", "0.8"]), slice(10, None), errors.InconsistentSeries,
     "different pixel spacings"),
    # A negative pixel size mirrors the columns: a left stroke was scored as a right one.
    (lambda ds: setattr(ds, "PixelSpacing", ["1", "-1"]), slice(None), errors.NoSeries, "not two positive sizes"),
    # Direction cosines that are not unit vectors would scale the head (2 = twice as wide).
    (lambda ds: setattr(ds, "ImageOrientationPatient", ["2", "0", "0", "0", "2", "0"]), slice(None),
     errors.NoSeries, "not two orthogonal unit vectors"),
    # One slice with no finite position used to be sorted into the stack somewhere.
    (lambda ds: setattr(ds, "ImagePositionPatient", ["0", "0", "1e400"]), slice(4, 5), errors.UnreadableInput,
     "not a finite number"),
    # A colour screenshot filed into the series: its red channel was read as densities.
    (_colour, slice(5, 6), errors.UnreadableInput, "colour image"),
])
def test_dicom_slices_with_impossible_geometry_or_pixels_are_refused(tmp_path, edit, which, error, words):
    write_series(tmp_path / "s", head_phantom())
    edit_slices(tmp_path / "s", edit, which)
    with pytest.raises(error, match=words):
        read_study(tmp_path / "s")


@pytest.mark.parametrize("field, value, error, words", [
    ("ElementSpacing", "-1 1 5", errors.AbsurdSize, "zero, negative"),       # mirrored: the wrong side
    ("TransformMatrix", "2 0 0 0 2 0 0 0 1", errors.UnreadableInput, "not a rotation"),
    ("TransformMatrix", "1 0.5 0 0 1 0 0 0 1", errors.UnreadableInput, "not a rotation"),
])
def test_a_metaimage_header_that_mirrors_scales_or_shears_the_head_is_refused(tmp_path, field, value, error, words):
    """ITK reads MetaImage geometry as written (NIfTI's reader refuses such matrices itself)."""
    path = tmp_path / "h.mha"
    sitk.WriteImage(sitk.GetImageFromArray(head_phantom().astype(np.int16)), str(path))
    text = path.read_bytes()
    start = text.index(field.encode())
    end = text.index(b"\n", start)
    path.write_bytes(text[:start] + f"{field} = {value}".encode() + text[end:])
    with pytest.raises(error, match=words):
        read_study(path)


def test_a_nifti_whose_two_orientations_flip_an_axis_is_refused(tmp_path):
    """qform and sform both set: readers differ in which they trust, so a flip between them makes
    the side a matter of the reader. An oblique head whose two agree reads as before."""
    rotation = sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.3).GetMatrix()
    img = sitk.GetImageFromArray(head_phantom().astype(np.int16))
    img.SetSpacing(SPACING)
    img.SetDirection(rotation)
    path = tmp_path / "oblique.nii"
    sitk.WriteImage(img, str(path))
    assert read_study(path).hu.shape == head_phantom().shape
    raw = bytearray(path.read_bytes())
    assert np.frombuffer(bytes(raw[252:256]), "<i2").tolist() == [1, 1]     # ITK writes both
    srow = np.frombuffer(bytes(raw[280:328]), "<f4").reshape(3, 4).copy()
    srow[:, 0] = -srow[:, 0]                                                # the sform's i axis flipped
    raw[280:328] = srow.tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(errors.InconsistentSeries, match="qform and sform point voxel axis i opposite ways"):
        read_study(path)


def test_dicom_uneven_spacing_is_regridded(tmp_path):
    hu = head_phantom()
    z = [k * 5.0 + (0.6 if k % 3 == 1 else 0.0) for k in range(hu.shape[0])]
    write_series(tmp_path / "s", hu, z_positions=z)
    study = read_study(tmp_path / "s")
    assert study.spacing[2] == pytest.approx(5.0, abs=0.05)
    assert any("uneven" in w for w in study.warnings)


def test_dicom_gantry_tilt_is_kept_as_shear(tmp_path):
    write_series(tmp_path / "s", head_phantom(), tilt_deg=12.0)
    study = read_study(tmp_path / "s")
    assert study.metadata["gantry_tilt_deg"] == pytest.approx(12.0, abs=0.1)
    # The stacking vector leans along the column (y) direction by tan(12 deg) per mm of z.
    assert study.affine[1, 2] / study.affine[2, 2] == pytest.approx(np.tan(np.radians(12.0)), rel=1e-3)
    assert any("tilt" in w for w in study.warnings)


def test_nifti_roundtrip(tmp_path):
    hu = head_phantom()
    study = read_study(_nifti(tmp_path / "h.nii.gz", hu))
    np.testing.assert_array_equal(study.hu, hu.astype(np.float32))
    np.testing.assert_allclose(study.spacing, SPACING)


def test_a_nii_gz_whose_voxels_were_damaged_is_refused_by_its_checksum(tmp_path):
    """Damage that leaves the deflate stream decodable (here a stored block, as a fast writer makes)
    gives wrong voxels with no decoding error: only the gzip CRC at the stream's end tells. Before,
    the reader stopped at the last voxel byte and never reached that check, and scored the damage."""
    spacing = (0.5, 0.5, 5.0)
    hu = head_phantom(shape=(20, 400, 320), spacing=spacing)     # larger than the reader's 4 MB chunk
    raw = _nifti(tmp_path / "h.nii", hu, spacing).read_bytes()
    packed = bytearray(gzip.compress(raw, compresslevel=0))
    middle = len(packed) // 2
    assert packed[middle] != 0x7F
    packed[middle] = 0x7F                        # inside the voxels: the stored block's bytes are the file's
    damaged = tmp_path / "damaged.nii.gz"
    damaged.write_bytes(bytes(packed))
    intact = tmp_path / "intact.nii.gz"
    intact.write_bytes(gzip.compress(raw, compresslevel=0))
    np.testing.assert_array_equal(read_study(intact).hu, hu.astype(np.float32))
    with pytest.raises(errors.UnreadableInput, match="corrupt"):
        read_study(damaged)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])      # NIfTI's own voxel path and ITK's
def test_a_head_stored_slices_first_is_the_same_axial_study(tmp_path, suffix):
    """A (z, y, x) array saved as if it were (x, y, z), with an affine that says so: the same head.
    Every stage after the reader takes array axis 0 as the slice axis, so the reader reorders the
    voxels (no resampling); before, this file was refused as "not a head CT size"."""
    hu = head_phantom()
    hu[3, 10, 20] = 1234.0
    axial_file = _nifti(tmp_path / "axial.nii.gz", hu)
    axial = read_study(axial_file)
    stored = tmp_path / f"lip{suffix}"
    sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(axial_file)), "LIP"), str(stored))   # left, inferior, posterior
    assert sitk.ReadImage(str(stored)).GetSize()[1] == hu.shape[0]   # the slices run along the file's j
    study = read_study(stored)
    assert study.hu.shape == hu.shape
    np.testing.assert_allclose(study.spacing, SPACING, atol=1e-6)
    assert any("reordered" in w for w in study.warnings) and not axial.warnings

    def world(s, zyx):
        return (s.affine @ [zyx[2], zyx[1], zyx[0], 1.0])[:3]

    marker = np.unravel_index(np.argmax(study.hu), study.hu.shape)
    np.testing.assert_allclose(world(study, marker), world(axial, (3, 10, 20)), atol=1e-6)
    np.testing.assert_array_equal(np.sort(study.hu, axis=None), np.sort(axial.hu, axis=None))


def test_a_coronal_reconstruction_is_refused_as_not_axial(tmp_path):
    hu = head_phantom(shape=(120, 40, 160), spacing=(1.0, 5.0, 1.0))    # 5 mm slices front to back
    with pytest.raises(errors.InconsistentSeries, match="coronal or sagittal"):
        read_study(_nifti(tmp_path / "cor.nii.gz", hu, spacing=(1.0, 5.0, 1.0)))


@pytest.mark.parametrize("case, error", [
    ("missing", errors.UnreadableInput),
    ("empty_folder", errors.NoSeries),
    ("junk_folder", errors.NoSeries),
    ("folder_of_a_volume", errors.NoSeries),
    ("corrupt_file", errors.UnreadableInput),
    ("mr", errors.WrongModality),
    ("few_slices", errors.TooFewSlices),
    ("flat", errors.NotAHead),
    ("no_skull", errors.NotAHead),
    ("body", errors.NotAHead),
    ("huge", errors.AbsurdSize),
    ("spacing", errors.AbsurdSize),
])
def test_bad_input_is_refused_with_its_own_error(tmp_path, case, error):
    hu = head_phantom()
    if case == "missing":
        path = tmp_path / "nope.nii.gz"
    elif case == "empty_folder":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "junk_folder":
        path = tmp_path / "junk"
        path.mkdir()
        (path / "notes.txt").write_text("not an image")
    elif case == "folder_of_a_volume":
        path = tmp_path / "vol"
        path.mkdir()
        _nifti(path / "head.nii.gz", hu)
    elif case == "corrupt_file":
        path = _nifti(tmp_path / "c.nii.gz", hu)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif case == "mr":
        path = tmp_path / "mr"
        write_series(path, hu, modality="MR")
    elif case == "few_slices":
        path = _nifti(tmp_path / "f.nii.gz", hu[:4])
    elif case == "flat":
        path = _nifti(tmp_path / "flat.nii.gz", np.zeros_like(hu))
    elif case == "no_skull":
        path = _nifti(tmp_path / "s.nii.gz", np.where(hu > 100, 30.0, hu))
    elif case == "body":
        big = np.full((16, 400, 400), -1000.0)
        yy, xx = np.mgrid[0:400, 0:400]
        body = ((xx - 200) / 170.0) ** 2 + ((yy - 200) / 120.0) ** 2 < 1
        big[:, body] = 40.0
        big[:, (np.abs(xx - 200) > 150) & body] = 700.0          # ribs / arms far apart
        path = _nifti(tmp_path / "b.nii.gz", big)
    elif case == "huge":
        path = _nifti(tmp_path / "h.nii.gz", np.zeros((2100, 40, 40)))
    else:
        path = _nifti(tmp_path / "sp.nii.gz", hu, spacing=(8.0, 8.0, 5.0))
    with pytest.raises(error) as info:
        read_study(path)
    assert "\n" not in str(info.value)
    if case == "folder_of_a_volume":              # the way out is named: the file, not its folder
        assert "head.nii.gz: give the file itself" in str(info.value)


def test_exit_codes_are_distinct():
    classes = errors.AspectsError.__subclasses__()
    codes = [cls.exit_code for cls in classes]
    assert len(codes) == len(set(codes))
    assert 0 not in codes                        # 0 = success
    # 2 is argparse's usage code: only the usage error may share it.
    assert [c.__name__ for c in classes if c.exit_code == 2] == ["UsageError"]


@pytest.mark.parametrize("tags, age", [({"PatientAge": "007Y"}, "7 years"), ({"PatientAge": "018M"}, "18 months"),
                                       ({"PatientBirthDate": "20150601", "StudyDate": "20261206"}, "11 years"),
                                         ({"PatientAge": "045Y"}, None), ({"PatientAge": "18Y"}, None),
                                         ({"PatientAge": "old", "PatientBirthDate": "unknown"}, None), ({}, None)])
def test_a_childs_scan_is_scored_with_a_warning(tmp_path, tags, age):
    """ASPECTS, the atlas, the density rule and the networks are adult; a child's stroke CT sent to the
    node was scored without a word. An age that cannot be read says nothing and stops nothing."""
    write_series(tmp_path / "s", head_phantom())
    edit_slices(tmp_path / "s", lambda ds: [setattr(ds, k, v) for k, v in tags.items()])
    study = read_study(tmp_path / "s")
    said = [w for w in study.warnings if "adult" in w]
    if age is None:
        assert said == []
    else:
        assert len(said) == 1 and said[0].startswith(f"the patient is {age} old")
        assert study.metadata["patient_age_years"] < 18
