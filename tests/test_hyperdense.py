"""A bleed must never leave as a bare ASPECTS (runtime.hyperdense): before the check, a 5 mL bleed
in the left lentiform nucleus of a real normal head scored "ASPECTS 10, > 6" and said nothing else."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pydicom
import pytest

from runtime.hyperdense import FOCUS_ML, find_hyperdense
from runtime.read import Study, read_study
from runtime.regions import BRAIN_LABEL, REGION_NAMES, label_id
from runtime.resample import ModelGrid
from tests.test_dicom_out import _sr_groups

GRID = ModelGrid(shape=(6, 160, 160), spacing=(0.5, 0.5, 5.0), origin=(0.0, 0.0, 0.0), slab=1)


def _brighter_sphere(study: Study, result, region: str, side: str, ml: float, add_hu: float = 35.0) -> Study:
    """The study with a sphere of `ml` around the centre of one region (found by the runtime's own
    regions, taken back to the study's voxels through its recovered pose) made `add_hu` brighter:
    acute blood, 60-70 HU, in parenchyma."""
    zyx = np.argwhere(result.labels == label_id(REGION_NAMES.index(region), side)).mean(axis=0)
    model_to_voxel = np.linalg.inv(study.affine) @ result.alignment.matrix @ result.grid.index_to_model
    centre = (model_to_voxel @ np.array([zyx[2], zyx[1], zyx[0], 1.0]))[:3]          # (i, j, k)
    k, j, i = np.indices(study.hu.shape)
    offsets = np.stack([i - centre[0], j - centre[1], k - centre[2]], axis=-1) @ study.affine[:3, :3].T
    radius = (ml * 1000 * 3 / (4 * np.pi)) ** (1 / 3)
    inside = (np.linalg.norm(offsets, axis=-1) <= radius) & (study.hu > 15) & (study.hu < 50)
    return replace(study, hu=np.where(inside, study.hu + add_hu, study.hu).astype(np.float32))


def test_the_demo_has_no_hyperdense_focus(demo_result):
    assert demo_result.hyperdense.foci == () and not demo_result.hyperdense.mask.any()
    assert not [w for w in demo_result.warnings if "hyperdense" in w]


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_bleed_is_found_on_its_side_and_said_first_everywhere(tmp_path, demo_study, demo_result, scorer, side):
    from runtime.report import footer_lines, write_report

    result = scorer.score(_brighter_sphere(demo_study, demo_result, "L", side, ml=5.0))
    assert len(result.hyperdense.foci) == 1, result.hyperdense.foci
    focus = result.hyperdense.foci[0]
    assert focus.side == side and f"{side} L" in focus.regions and 3.0 <= focus.volume_ml <= 6.0
    assert 55 <= focus.mean_hu <= 80 and focus.above_mirror_hu >= 20
    assert result.warnings[0].startswith(f"hyperdense tissue in the {side} hemisphere")
    assert "look at the images before using this score" in result.warnings[0]
    z = (focus.slices[0] + focus.slices[1]) // 2
    assert result.hyperdense.mask[z].any() and not result.hyperdense.mask[:focus.slices[0]].any()
    assert footer_lines(result, z)[-1][0].startswith(f"HYPERDENSE tissue {focus.volume_ml:.1f} mL, {side} (outlined)")

    paths = write_report(result, tmp_path / "out", ("json", "sr"))
    doc = json.loads(paths["report"].read_text())
    assert doc["hyperdense"][0]["side"] == side and doc["warnings"][0] == result.warnings[0]
    summary = _sr_groups(pydicom.dcmread(paths["sr.dcm"]))["ASPECTS study"]
    assert summary["Hyperdense tissue found, haemorrhage not excluded"] == "Yes"
    assert float(summary["Hyperdense tissue volume"]) == pytest.approx(focus.volume_ml)


def _head(hu_tissue: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """A round head on GRID: parenchyma inside a skull, every slice holding regions."""
    _, ny, nx = GRID.shape
    yy, xx = np.mgrid[:ny, :nx]
    r = np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2)
    hu = np.where(r < 70, hu_tissue, np.where(r < 76, 1000.0, -1000.0)).astype(np.float32)
    labels = np.repeat(np.where(r < 70, BRAIN_LABEL, 0).astype(np.uint8)[None], GRID.shape[0], axis=0)
    labels[:, 70:90, 30:50] = label_id(REGION_NAMES.index("L"), "right")      # model x above the centre: left
    labels[:, 70:90, 110:130] = label_id(REGION_NAMES.index("L"), "left")
    return np.repeat(hu[None], GRID.shape[0], axis=0), labels


def _ball(shape, centre_zyx, radius_vox: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    return np.hypot(np.hypot((z - centre_zyx[0]) * 10, y - centre_zyx[1]), x - centre_zyx[2]) <= radius_vox


def test_what_is_not_a_focus_stays_out():
    hu, labels = _head()
    assert find_hyperdense(hu, labels, GRID).foci == ()
    blob = _ball(hu.shape, (3, 80, 115), 16)            # about 2.5 mL, left of the midline
    assert blob.sum() * GRID.voxel_ml > 2 * FOCUS_ML

    found = find_hyperdense(np.where(blob, 65.0, hu), labels, GRID).foci
    assert [f.side for f in found] == ["left"] and found[0].regions[0] == "left L"
    # The same brightness on both sides: anatomy or an artefact they share, not a bleed.
    both = blob | blob[:, :, ::-1]
    assert find_hyperdense(np.where(both, 65.0, hu), labels, GRID).foci == ()
    # A dense vessel: 2 mm wide, as much volume as a bleed that is found.
    vessel = np.zeros_like(blob)
    vessel[:, 25:135, 100:104] = True
    assert vessel.sum() * GRID.voxel_ml > 2 * FOCUS_ML
    assert find_hyperdense(np.where(vessel, 80.0, hu), labels, GRID).foci == ()
    # A calcification and the 3 mm rim that partial volume in a thick slice makes around it.
    calc, rim = _ball(hu.shape, (3, 80, 115), 16), _ball(hu.shape, (3, 80, 115), 22)
    assert (rim & ~calc).sum() * GRID.voxel_ml > FOCUS_ML
    assert find_hyperdense(np.where(calc, 200.0, np.where(rim, 65.0, hu)), labels, GRID).foci == ()
    # Under thin bone that a thick slice averages below calcification's HU, its partial volume in the
    # outermost 3 mm of brain on one side.
    _, ny, nx = GRID.shape
    r = np.broadcast_to(np.hypot(*np.mgrid[:ny, :nx] - (ny - 1) / 2), hu.shape)
    thin_bone = np.where((r >= 70) & (r < 76), 110.0, hu)
    band = (r >= 64) & (r < 70) & (np.arange(nx) > 100)
    assert band.sum() * GRID.voxel_ml > 2 * FOCUS_ML
    assert find_hyperdense(np.where(band, 70.0, thin_bone), labels, GRID).foci == ()
    # Slices without ASPECTS regions are not looked at.
    labels[:, 70:90, 30:50] = labels[:, 70:90, 110:130] = BRAIN_LABEL
    assert find_hyperdense(np.where(blob, 65.0, hu), labels, GRID).foci == ()


def test_real_heads_have_no_focus_and_a_real_head_with_a_bleed_has(real_data, scorer):
    """The three development studies, native and pre-aligned: the largest piece was 0.16 mL when the
    check was made. Then 3 mL of blood in the right caudate of a normal real head (sub005)."""
    for name in ("sub002_im", "sub003_im", "sub005_im", "sub002_im_aligned", "sub003_im_aligned",
                 "sub005_im_aligned"):
        result = scorer.score(real_data / f"{name}.nii.gz")
        assert result.hyperdense.foci == () and result.hyperdense.metal is None, (name, result.hyperdense)
    study = read_study(real_data / "sub005_im.nii.gz")
    result = scorer.score(_brighter_sphere(study, scorer.score(study), "C", "right", ml=3.0))
    assert [f.side for f in result.hyperdense.foci] == ["right"]
    assert "right C" in result.hyperdense.foci[0].regions and result.hyperdense.foci[0].volume_ml >= 1.5


def test_metal_inside_the_skull_is_named_with_the_regions_near_it(tmp_path, demo_study, demo_result, scorer):
    """An aneurysm clip beside the left insula: its streaks read as asymmetry to both the density
    measure and the DA-Net, so the calls near it are said to be in doubt."""
    from runtime.report import write_report
    assert demo_result.hyperdense.metal is None
    clipped = _brighter_sphere(demo_study, demo_result, "I", "left", ml=0.1, add_hu=3000.0)
    result = scorer.score(clipped)
    metal = result.hyperdense.metal
    assert metal is not None and 0.02 <= metal.volume_ml <= 0.2 and "left I" in metal.regions_near
    assert not any(r.startswith("right") for r in metal.regions_near)
    said = [w for w in result.warnings if w.startswith("metal inside the skull")]
    assert len(said) == 1 and "left I" in said[0]
    paths = write_report(result, tmp_path / "out", ("json", "sr"))
    assert json.loads(paths["report"].read_text())["metal"]["regions_near"] == list(metal.regions_near)
    assert _sr_groups(pydicom.dcmread(paths["sr.dcm"]))["ASPECTS study"]["Metal near the ASPECTS regions"] == "Yes"
