"""Resampling into the model grid, slab averaging, windowing and skull stripping."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.align import Alignment, align
from runtime.modelcard import GridSpec
from runtime.read import Study
from runtime.resample import model_grid, resample, window
from runtime.strip import brain_mask

SPEC = GridSpec(spacing_mm=(0.5, 0.5), shape_xy=(64, 80), min_slice_mm=4.0, reformat_slice_mm=5.0)


def _alignment(rotation_deg=0.0, point=(3.0, -2.0, 20.0)) -> Alignment:
    t = np.radians(rotation_deg)
    m = np.eye(4)
    m[:3, :3] = [[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]
    m[:3, 3] = point
    return Alignment(matrix=m, normal=m[:3, 0], point=np.asarray(point), yaw_deg=rotation_deg, roll_deg=0.0,
                     symmetry=1.0)


def _ramp_study(spacing=(0.7, 0.7, 5.0), shape=(12, 120, 120)):
    """HU = linear function of LPS position: trilinear interpolation must reproduce it exactly."""
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = (-40.0, -42.0, -5.0)
    k, j, i = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]].astype(float)
    world = [a[r, 0] * i + a[r, 1] * j + a[r, 2] * k + a[r, 3] for r in range(3)]
    hu = (2.0 * world[0] - 1.0 * world[1] + 0.5 * world[2]).astype(np.float32)
    return Study(hu=hu, affine=a, source="ramp"), lambda x, y, z: 2.0 * x - 1.0 * y + 0.5 * z


@pytest.mark.parametrize("rotation", [0.0, 11.0])
def test_resample_is_exact_on_linear_fields(rotation):
    study, f = _ramp_study()
    al = _alignment(rotation)
    grid = model_grid(study, al, SPEC)
    hu = resample(study, al, grid)
    assert grid.shape[1:] == (80, 64) and grid.slab == 1
    k, j, i = np.mgrid[0:grid.shape[0], 0:grid.shape[1], 0:grid.shape[2]].astype(float)
    model = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    world = (al.matrix @ grid.index_to_model @ model)[:3]
    want = f(*world).reshape(grid.shape)
    inner = hu > -1000                                  # inside the study's field of view
    assert inner.mean() > 0.8
    np.testing.assert_allclose(hu[inner], want[inner], atol=1e-3)


def test_thin_slices_are_averaged_into_slabs():
    study, f = _ramp_study(spacing=(0.7, 0.7, 1.0), shape=(40, 120, 120))
    al = _alignment()
    grid = model_grid(study, al, SPEC)
    assert grid.slab == 5 and grid.spacing[2] == pytest.approx(5.0)
    hu = resample(study, al, grid)
    centre = hu[2, 40, 32]
    world = al.matrix @ grid.index_to_model @ np.array([32, 40, 2, 1.0])
    assert centre == pytest.approx(f(*world[:3]), abs=1e-3)     # slab mean of a linear field = centre value


def test_mirroring_the_model_grid_swaps_patient_sides():
    """A head symmetric about its plane resamples to an x-symmetric array."""
    study, _ = _ramp_study()
    x = study.affine[0, 0] * np.arange(study.hu.shape[2]) + study.affine[0, 3]
    plane_x = 2.0          # on a voxel centre, so the study grid itself is mirror-symmetric
    sym = np.abs(x - plane_x)[None, None, :] * np.ones(study.hu.shape)
    sym_study = Study(hu=(sym * 10).astype(np.float32), affine=study.affine, source="sym")
    al = _alignment(point=(plane_x, 0.0, 20.0))
    hu = resample(sym_study, al, model_grid(sym_study, al, SPEC))
    np.testing.assert_allclose(hu, hu[:, :, ::-1], atol=1e-3)


def test_window_maps_the_stroke_window_to_unit_range():
    hu = np.array([[[-100.0, 0.0, 30.0, 60.0, 500.0]]])
    brain = np.array([[[True, True, True, True, False]]])
    np.testing.assert_allclose(window(hu, brain, 30.0, 60.0), [[[-1.0, -1.0, 0.0, 1.0, -1.0]]])


@pytest.fixture(scope="module")
def demo_on_grid(demo_study):
    al = align(demo_study)
    grid = model_grid(demo_study, al, GridSpec((0.5, 0.5), (384, 448), 4.0, 5.0))
    return resample(demo_study, al, grid), grid


@pytest.mark.xfail(strict=True, reason="known defect: on the synthetic head the template's smooth scalp touches the "
                   "brain through thin bone and is not cut off; real studies strip cleanly (test_real_studies)")
def test_skull_strip_keeps_brain_and_drops_bone(demo_on_grid):
    hu, grid = demo_on_grid
    mask = brain_mask(hu, grid.spacing[0])
    ml = mask.sum() * np.prod(grid.spacing) / 1000
    assert 700 < ml < 1700
    assert (hu[mask] > 100).mean() < 0.002
    assert 15 < np.median(hu[mask]) < 45
    # Nothing outside the skull: the mask's bounding box stays inside the bone's.
    bone_x = np.nonzero((hu > 300).any(axis=(0, 1)))[0]
    mask_x = np.nonzero(mask.any(axis=(0, 1)))[0]
    assert bone_x.min() < mask_x.min() and mask_x.max() < bone_x.max()


def test_skull_strip_handles_air_clipped_to_zero(demo_on_grid):
    """Some exports clip HU at 0, so air looks like CSF."""
    hu, grid = demo_on_grid
    ref = brain_mask(hu, grid.spacing[0])
    clipped = brain_mask(np.maximum(hu, 0.0), grid.spacing[0])
    dice = 2 * (ref & clipped).sum() / (ref.sum() + clipped.sum())
    assert dice > 0.95
