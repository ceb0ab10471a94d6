"""DICOM SEG, SR and secondary captures: read back, referencing and overlaying the source series."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from runtime.dicom_out import labels_on_source_planes
from runtime.regions import AFFECTED_RGB, is_region, label_id
from runtime.report import write_report
from runtime.resample import to_study_grid
from tests.conftest import DEMO_STUDY
from tests.dicom_util import write_series


@pytest.fixture(scope="module")
def dicom_result(tmp_path_factory, scorer):
    """The bundled study written as a plain axial DICOM series (256 x 256), then scored."""
    folder = tmp_path_factory.mktemp("dicom") / "series"
    img = sitk.ReadImage(str(DEMO_STUDY))
    sx, sy, sz = img.GetSpacing()
    hu = sitk.GetArrayFromImage(img)[:, ::2, ::2]
    write_series(folder, hu, spacing=(sx * 2, sy * 2, sz), origin=img.GetOrigin(), patient_id="PAT-7")
    return folder, scorer.score(folder)


def test_labels_on_source_planes_match_the_study_grid(dicom_result):
    """Two routes from the model grid back to the source slices agree (an untilted, even series)."""
    from runtime.read import read_study
    folder, result = dicom_result
    study = read_study(folder)
    planes = labels_on_source_planes(result)
    grid = to_study_grid(study, result.alignment, result.grid, result.labels)
    grid[~is_region(grid)] = 0                             # region labels only: other brain is not a segment
    assert planes.shape == grid.shape
    assert (planes != grid).mean() < 1e-3


@pytest.mark.slow
def test_dicom_outputs_reference_and_overlay_the_source(dicom_result, tmp_path):
    import highdicom as hd
    folder, result = dicom_result
    paths = write_report(result, tmp_path / "out")
    assert {p.name for p in paths.values()} >= {"seg.dcm", "sr.dcm", "sc_ganglionic.dcm", "sc_supraganglionic.dcm"}
    source = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in sorted(folder.iterdir())}
    first = pydicom.dcmread(next(iter(source.values())), stop_before_pixels=True)

    seg = hd.seg.segread(tmp_path / "out" / "seg.dcm")
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.PatientID == "PAT-7"
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert len(seg.SegmentSequence) == 20 and seg.SegmentsOverlap == "NO"
    # The affected regions are the segments that say so, in red; the others keep their region's colour.
    red = list(hd.color.CIELabColor.from_rgb(*AFFECTED_RGB).value)
    said = {s.TrackingID.removeprefix("ASPECTS ") for s in seg.SegmentSequence
            if s.SegmentDescription.endswith("affected (early ischemic change)")}
    assert said == set(result.score.affected) and said
    assert {s.TrackingID.removeprefix("ASPECTS ") for s in seg.SegmentSequence
            if list(s.RecommendedDisplayCIELabValue) == red} == said
    # The label says it too: viewers list segments by label and seldom show the description.
    assert {s.SegmentLabel for s in seg.SegmentSequence if s.SegmentLabel.endswith(" (affected)")} == \
        {f"{name} (affected)" for name in said}
    planes = labels_on_source_planes(result)
    uids = [ds.SOPInstanceUID for ds in result.source_images]
    # Every frame sits on a source slice, and its pixels are that slice's labels.
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert ref in source
        r, side = divmod(int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber) - 1, 2)
        expected = planes[uids.index(ref)] == label_id(r, ("left", "right")[side])
        np.testing.assert_array_equal(seg.pixel_array[i].astype(bool), expected)

    sr = pydicom.dcmread(tmp_path / "out" / "sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.StudyInstanceUID == first.StudyInstanceUID
    text = str(sr)
    assert "ASPECTS" in text and "Density difference to mirror region" in text and "Volume hypodense" in text
    assert text.count("Borderline call") == 20 and "Dichotomy holds over borderline and unassessed regions" in text
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert evidence == set(source)

    for level in ("ganglionic", "supraganglionic"):
        sc = pydicom.dcmread(tmp_path / "out" / f"sc_{level}.dcm")
        assert sc.StudyInstanceUID == first.StudyInstanceUID and sc.PatientID == "PAT-7"
        ref = sc.SourceImageSequence[0].ReferencedSOPInstanceUID
        assert ref in source and sc.pixel_array.shape[-1] == 3
        assert sc.BurnedInAnnotation == "YES"           # an anonymiser must know the pixels name the patient
    # A PACS study browser lists each result series by its description: none was written.
    assert [pydicom.dcmread(tmp_path / "out" / f, stop_before_pixels=True).SeriesDescription
            for f in ("seg.dcm", "sr.dcm", "sc_ganglionic.dcm")] == ["aspects-rt: ASPECTS regions",
                                                                       "aspects-rt: ASPECTS report",
                                                                       "aspects-rt: ASPECTS key images"]


def _sr_groups(sr) -> dict[str, dict[str, str]]:
    """Each measurement group of an SR by its tracking identifier: concept name -> value (code meaning
    or number)."""
    groups = {}

    def walk(items, into):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if item.ValueType == "CONTAINER" and name == "Measurement Group":
                found: dict[str, str] = {}
                walk(item.ContentSequence, found)
                groups[found.get("Tracking Identifier", "")] = found
                continue
            if item.ValueType == "CODE":
                into[name] = item.ConceptCodeSequence[0].CodeMeaning
            elif item.ValueType == "NUM":
                into[name] = str(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "TEXT":
                into[name] = item.TextValue
            if "ContentSequence" in item:
                walk(item.ContentSequence, into)
    walk(sr.ContentSequence, {})
    return groups


def test_the_sr_says_which_regions_were_not_assessed_and_the_scores_range(dicom_result):
    """A region outside a short scan read 'Early ischemic change: No' in the SR, as if it had been
    looked at and found normal. It now reads 'Region assessed: No' with no call, and the summary gives
    the range that it and the borderline calls leave open."""
    from dataclasses import replace

    from runtime.dicom_out import make_sr, to_bytes
    from runtime.score import score
    _, result = dicom_result
    calls = tuple(replace(c, assessed=False, affected=False, borderline=False, probability=None,
                          difference_hu=None, hypodense_ml=None) if c.region in ("M4", "M5", "M6") else c
                  for c in result.score.calls)
    short = replace(result, score=score(calls))
    groups = _sr_groups(pydicom.dcmread(io.BytesIO(to_bytes(make_sr(short)))))
    for c in calls:
        group = groups[f"ASPECTS {c.side} {c.region}"]
        assert group["Region assessed"] == ("Yes" if c.assessed else "No"), (c, group)
        assert ("Early ischemic change" in group) == c.assessed
    summary = groups["ASPECTS study"]
    assert float(summary["ASPECTS lowest, borderline and unassessed regions affected"]) == short.score.lowest
    assert float(summary["ASPECTS highest, borderline calls not affected"]) == short.score.highest
    assert short.score.lowest <= short.score.aspects - 3
    # The key images list them too: a region drawn nowhere would read as a normal one.
    from runtime.report import footer_lines
    said = [text for text, _ in footer_lines(short, 0) if text.startswith("not assessed")]
    assert said and all(f"{side} {r}" in said[0] for r in ("M4", "M5", "M6") for side in ("left", "right"))
    assert not [text for text, _ in footer_lines(result, 0) if text.startswith("not assessed")]


def test_key_images_keep_the_sources_character_set(dicom_result):
    """A German or Japanese name in a UTF-8 series: the SEG and SR kept it, the key images wrote it in
    the default character set, 'Müller^Jürgen=??^??'. The identity on every output must be the source's."""
    import copy
    from dataclasses import replace

    from runtime.dicom_out import make_sc, make_seg, to_bytes
    _, result = dicom_result
    name = "Müller^Jürgen=山田^太郎"
    headers = []
    for ds in result.source_images:
        ds = copy.deepcopy(ds)
        ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 192", name
        headers.append(ds)
    named = replace(result, source_images=tuple(headers))
    rgb = np.zeros((8, 8, 3), np.uint8)
    for made in (make_sc(named, rgb, 0, 1, pydicom.uid.generate_uid()), make_seg(named)):
        back = pydicom.dcmread(io.BytesIO(to_bytes(made)))
        assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == name


def test_every_key_image_names_its_patient(dicom_result, demo_result):
    """A PNG has no header: seen away from its study it must still say whose scan it is. The name and ID
    come first, so a cut line keeps them; a PN's ideographic group (the font has no such glyphs) is left
    out; a volume file without identity is named by its file."""
    from dataclasses import replace

    from PIL import Image, ImageDraw

    from runtime.report import _fit, _font, identity_line, render_slice
    _, result = dicom_result
    assert identity_line(result).startswith("PAT-7, TEST  |  ID PAT-7  |  acc. APAT-7  |  2026-11-25")
    assert identity_line(demo_result) == "file default_study.nii.gz (no patient identity)"
    ident = {**result.metadata["identity"], "PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう"}
    named = replace(result, metadata={**result.metadata, "identity": ident, "series_description": "X" * 300})
    line = identity_line(named)
    assert line.startswith("Yamada, Tarou  |  ID PAT-7") and "山" not in line
    cut = _fit(ImageDraw.Draw(Image.new("RGB", (1, 1))), line, _font(14), 500)
    assert cut.startswith("Yamada, Tarou  |  ID PAT-7") and cut.endswith("...") and len(cut) < len(line)
    # The key images' font is ASCII only: accents dropped, other scripts marked, never drawn as boxes.
    ident = {**ident, "PatientName": "Strauß^Jürgen", "StudyDate": "20261205"}
    accented = replace(result, metadata={**result.metadata, "identity": ident, "series_description": "Schädel"})
    assert identity_line(accented).startswith("Strauss, Jurgen  |  ID PAT-7") and "Schadel" in identity_line(accented)
    cyrillic = replace(result, metadata={**result.metadata, "identity": {**ident, "PatientName": "Иванов^Иван"}})
    assert identity_line(cyrillic).startswith("(not in Latin script)  |  ID PAT-7")
    # The line is drawn: the key image's identity band differs between two patients.
    z = int(result.labels.shape[0] // 2)
    bands = [np.asarray(render_slice(r, z, "ganglionic"))[28:48] for r in (result, named)]
    assert (bands[0] != bands[1]).any()


@pytest.mark.slow
def test_dicom_outputs_pass_dciodvfy(dicom_result, tmp_path):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed; the outputs are checked with highdicom and pydicom")
    _, result = dicom_result
    write_report(result, tmp_path / "out")
    for name in ("seg.dcm", "sr.dcm", "sc_ganglionic.dcm"):
        run = subprocess.run(["dciodvfy", str(tmp_path / "out" / name)], capture_output=True, text=True)
        errors = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{name}: {errors[:5]}"


def test_volume_input_writes_dicom_only_when_asked_and_says_why(demo_result, tmp_path):
    import json
    paths = write_report(demo_result, tmp_path / "a")
    doc = json.loads(paths["report"].read_text())
    assert "ask for seg" in doc["dicom_outputs"] and not any(n.endswith((".dcm", ".zip")) for n in doc["outputs"])


@pytest.mark.slow
def test_volume_input_dicom_outputs_reference_a_ct_series_made_from_it(demo_result, tmp_path):
    """New UIDs, no identity, and the series they reference ships beside them: it reads back to the
    same voxels and geometry, and scores the same."""
    import json
    import zipfile

    from runtime.read import read_study
    write_report(demo_result, tmp_path / "out", outputs=("json", "seg", "sr", "sc"))
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["dicom_outputs"].startswith("new UIDs") and "source_ct.zip" in doc["outputs"]
    with zipfile.ZipFile(tmp_path / "out" / "source_ct.zip") as z:
        z.extractall(tmp_path / "ct")
    ct = read_study(tmp_path / "ct")
    hu, affine = demo_result.volume
    np.testing.assert_array_equal(ct.hu, np.rint(hu))
    np.testing.assert_allclose(ct.affine, affine, atol=1e-4)
    first = pydicom.dcmread(sorted((tmp_path / "ct").iterdir())[0], stop_before_pixels=True)
    assert first.PatientID == "" and "aspects-rt" in first.DerivationDescription
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in (tmp_path / "ct").iterdir()}
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs and refs <= sources
    sc = pydicom.dcmread(tmp_path / "out" / "sc_ganglionic.dcm")
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in sources
    if shutil.which("dciodvfy"):
        for path in [tmp_path / "out" / n for n in ("seg.dcm", "sr.dcm", "sc_ganglionic.dcm")] + \
                [sorted((tmp_path / "ct").iterdir())[0]]:
            run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            assert not [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")], path.name


def _segment_centres_lps(path) -> dict[str, np.ndarray]:
    """Each segment's centre in patient LPS mm, from the SEG's own per-frame geometry."""
    seg = pydicom.dcmread(path)
    names = {s.SegmentNumber: s.TrackingID.removeprefix("ASPECTS ") for s in seg.SegmentSequence}
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_mm, col_mm = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    points: dict[str, list[np.ndarray]] = {}
    for frame, group in zip(seg.pixel_array.reshape(-1, seg.Rows, seg.Columns), seg.PerFrameFunctionalGroupsSequence):
        rows, cols = np.nonzero(frame)
        origin = np.array(group.PlanePositionSequence[0].ImagePositionPatient, float)
        name = names[group.SegmentIdentificationSequence[0].ReferencedSegmentNumber]
        points.setdefault(name, []).append(origin + np.outer(cols * col_mm, iop[:3]) + np.outer(rows * row_mm, iop[3:]))
    return {name: np.concatenate(p).mean(axis=0) for name, p in points.items()}


def test_a_mirrored_encoding_puts_every_region_on_the_same_side_of_the_patient(tmp_path, scorer, dicom_result):
    """The same head stored with its columns running right to left (row direction -x): the score,
    the side and every SEG region land where they do for the plain encoding (dicom_result), in
    patient space. A reader or writer that ignored the direction would swap left and right in the PACS."""
    img = sitk.ReadImage(str(DEMO_STUDY))
    sx, sy, sz = img.GetSpacing()
    hu = sitk.GetArrayFromImage(img)[:, ::2, ::2]
    ox, oy, oz = img.GetOrigin()
    nx = hu.shape[2]
    write_series(tmp_path / "mirrored", np.ascontiguousarray(hu[:, :, ::-1]), spacing=(sx * 2, sy * 2, sz),
                 origin=(ox + (nx - 1) * sx * 2, oy, oz), orientation=(-1, 0, 0, 0, 1, 0),
                 z_positions=[-k * sz for k in range(hu.shape[0])])    # the normal is -z: keep slices in place
    centres, calls = {}, {}
    for name, result in (("plain", dicom_result[1]), ("mirrored", scorer.score(tmp_path / "mirrored"))):
        calls[name] = (result.score.symptomatic_side, result.score.aspects, result.score.affected)
        write_report(result, tmp_path / f"{name}_out", outputs=("seg",))
        centres[name] = _segment_centres_lps(tmp_path / f"{name}_out" / "seg.dcm")
    assert calls["plain"] == calls["mirrored"] and calls["plain"][0] == "left"     # the demo's truth: left
    assert centres["plain"].keys() == centres["mirrored"].keys()
    for region, centre in centres["plain"].items():
        assert np.abs(centres["mirrored"][region] - centre).max() < 3.0, region
    assert centres["plain"]["left L"][0] > centres["plain"]["right L"][0]       # LPS: +x is the patient's left


def _seen_on_pacs(result, line_start: str, code: str) -> tuple[list[str], str]:
    """What a PACS user sees of one warning: the key image's legend lines that start so, and the SR
    summary's Yes/No for it. The warning in report.json never gets there."""
    from runtime.dicom_out import make_sr, to_bytes
    from runtime.report import footer_lines
    summary = _sr_groups(pydicom.dcmread(io.BytesIO(to_bytes(make_sr(result)))))["ASPECTS study"]
    return [t for t, _ in footer_lines(result, 0) if t.startswith(line_start)], summary[code]


def test_a_childs_key_images_and_sr_say_the_models_are_adult(dicom_result):
    from dataclasses import replace
    _, result = dicom_result
    child = replace(result, metadata={**result.metadata, "patient_age_years": 7.4})
    said = "patient 7 years old: ASPECTS and these models are made for adults"
    assert _seen_on_pacs(child, "patient", "Patient younger than the models' adults") == ([said], "Yes")
    assert _seen_on_pacs(result, "patient", "Patient younger than the models' adults") == ([], "No")
    assert _seen_on_pacs(child, "METAL", "Metal near the ASPECTS regions") == ([], "No")


def test_key_images_and_sr_ask_for_the_outlines_to_be_checked_when_the_fit_was_weak(dicom_result):
    """A weak alignment or a second-try atlas fit asks for the outlines, which are on the key images."""
    from dataclasses import replace
    _, result = dicom_result

    def said(r):
        return _seen_on_pacs(r, "CHECK the outlines", "Region outlines to be checked (weak fit)")
    assert said(result) == ([], "No")
    skewed = replace(result, alignment=replace(result.alignment, symmetry=0.3))
    assert said(skewed) == (["CHECK the outlines: the alignment was weak on this scan"], "Yes")
    both = replace(skewed, metadata={**result.metadata, "atlas_second_try": True})
    assert said(both) == (["CHECK the outlines: the alignment and the atlas fit were weak on this scan"], "Yes")


def test_key_images_and_sr_name_what_limits_the_source_series(dicom_result):
    """A lossy, sharp-kernel or contrast-named series was said in report.json only."""
    from dataclasses import replace
    _, result = dicom_result

    def said(r):
        return _seen_on_pacs(r, "CHECK the source", "Source series limits the density comparison")
    assert said(result) == ([], "No")
    limited = replace(result, metadata={**result.metadata, "source_limits": ["lossy-compressed", "sharp kernel"]})
    assert said(limited) == (["CHECK the source series: lossy-compressed, sharp kernel; the density calls are less "
                              "sure"], "Yes")
