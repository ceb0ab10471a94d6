"""Mirrored-patch batching and ASPECTS arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.patches import build_batch
from runtime.regions import REGION_LABELS, REGION_NAMES, classes_from_labels, label_id, labels_from_classes, swap_sides
from runtime.score import RegionCall, make_calls, score

CROP = (3, 20, 16)


def test_label_table_covers_every_region_side_once():
    seen = [label_id(r, side) for r in range(len(REGION_NAMES)) for side in ("left", "right")]
    assert sorted(seen) == list(REGION_LABELS) == list(range(1, 21))
    classes = classes_from_labels(np.array(seen))
    x_index = np.array([1 if side == "left" else -1 for r in range(10) for side in ("left", "right")])
    np.testing.assert_array_equal(labels_from_classes(classes, x_index, 0.0), seen)
    np.testing.assert_array_equal(swap_sides(swap_sides(np.array(seen))), seen)


def test_pairs_are_mirrored_crops_with_mask_channel(rng):
    nz, ny, nx = 9, 60, 80
    image = rng.uniform(-1, 1, (nz, ny, nx)).astype(np.float32)
    labels = np.zeros((nz, ny, nx), np.uint8)
    labels[3:6, 20:30, 55:65] = label_id(0, "left")       # x > centre: patient left
    labels[3:6, 22:32, 14:24] = label_id(0, "right")      # mirrored position is x 56..65, 2 voxels lower
    batch = build_batch(image, labels, ("C", "M1"), CROP)
    assert batch.pairs.shape == (2, 2, 2, *CROP)
    assert batch.assessable == (True, False)
    z0, y0, x0 = batch.origins[0]
    left = batch.pairs[0, 0]
    right = batch.pairs[0, 1]
    np.testing.assert_array_equal(left[0], image[z0:z0 + 3, y0:y0 + 20, x0:x0 + 16])
    np.testing.assert_array_equal(right[0], image[:, :, ::-1][z0:z0 + 3, y0:y0 + 20, x0:x0 + 16])
    assert set(np.unique(left[1])) == {0.0, 1.0} and set(np.unique(right[1])) == {0.0, 1.0}
    # Both masks sit inside the one crop window, centred on their union.
    assert left[1].sum() == 3 * 10 * 10 and right[1].sum() == 3 * 10 * 10


def test_crop_past_the_edge_is_padded(rng):
    image = rng.uniform(-1, 1, (4, 30, 30)).astype(np.float32)
    labels = np.zeros_like(image, np.uint8)
    labels[0:2, 0:6, 24:30] = label_id(1, "left")
    batch = build_batch(image, labels, ("L",), (5, 20, 16))
    assert (batch.pairs[0, 0, 0] == -1).any() and np.isfinite(batch.pairs).all()


def _calls(affected_left=(), affected_right=(), p=0.9):
    probs = {n: (p if n in affected_left else 0.1, p if n in affected_right else 0.1) for n in REGION_NAMES}
    return make_calls(probs, {n: True for n in REGION_NAMES}, {n: 0.5 for n in REGION_NAMES})


def test_score_per_hemisphere_and_dichotomy():
    s = score(_calls(affected_left=("C", "L", "M2", "M5")))
    assert (s.left, s.right, s.aspects, s.symptomatic_side, s.above_cut) == (6, 10, 6, "left", False)
    assert s.affected == ("left C", "left L", "left M2", "left M5")
    s = score(_calls(affected_right=("IC",)))
    assert (s.aspects, s.symptomatic_side, s.above_cut) == (9, "right", True)
    s = score(_calls())
    assert (s.aspects, s.symptomatic_side) == (10, None)


def test_score_range_covers_the_borderline_calls_both_ways():
    from dataclasses import replace
    calls = {(c.region, c.side): c for c in _calls(affected_left=("L", "I", "M2"), p=0.99)}
    # Firm calls: no range. (p 0.99 is 5.3 in logit above the 0.5 threshold, far beyond the margin.)
    s = score(tuple(calls.values()))
    assert (s.aspects, s.lowest, s.highest, s.dichotomy_firm) == (7, 7, 7, True)
    # One borderline call and one borderline miss on the left: 6 to 8 as they fall, across the cut.
    calls["M2", "left"] = replace(calls["M2", "left"], borderline=True)
    calls["M3", "left"] = replace(calls["M3", "left"], borderline=True)
    s = score(tuple(calls.values()))
    assert (s.aspects, s.lowest, s.highest, s.dichotomy_firm) == (7, 6, 8, False)
    # A borderline region on the other side only lowers the range if it would become the worse side.
    calls["C", "right"] = replace(calls["C", "right"], borderline=True)
    assert score(tuple(calls.values())).lowest == 6


def test_threshold_is_inclusive_and_unassessed_regions_do_not_deduct():
    probs = {n: (0.5, 0.49) for n in REGION_NAMES}
    calls = make_calls(probs, {n: n != "M6" for n in REGION_NAMES}, {n: 0.5 for n in REGION_NAMES})
    s = score(calls)
    assert s.left == 1                      # 9 assessed left regions at p == threshold
    assert s.right == 10
    assert s.not_assessed == ("left M6", "right M6")
    # A region never looked at may hide a deduction: the range goes down as if it were affected (up to 10:
    # every call here sits on its threshold, so is borderline).
    assert (s.aspects, s.lowest, s.highest) == (1, 0, 10)
    s = score(make_calls({n: (0.1, 0.1) for n in REGION_NAMES}, {n: n not in ("M4", "M5", "M6") for n in REGION_NAMES},
                         {n: 0.5 for n in REGION_NAMES}))
    assert (s.aspects, s.lowest, s.highest, s.dichotomy_firm) == (10, 7, 10, True)
    s = score(make_calls({n: (0.1, 0.9 if n == "M1" else 0.1) for n in REGION_NAMES},
                         {n: n not in ("M4", "M5", "M6") for n in REGION_NAMES}, {n: 0.5 for n in REGION_NAMES}))
    assert (s.aspects, s.lowest, s.highest, s.dichotomy_firm) == (9, 6, 9, False)


def test_tie_goes_to_the_side_with_stronger_evidence():
    probs = {n: (0.1, 0.1) for n in REGION_NAMES}
    probs["C"], probs["M3"] = (0.6, 0.1), (0.1, 0.95)
    s = score(make_calls(probs, {n: True for n in REGION_NAMES}, {n: 0.5 for n in REGION_NAMES}))
    assert s.left == s.right == 9 and s.symptomatic_side == "right"
    assert isinstance(s.calls[0], RegionCall)


def _table(fill: float, **by_region_side) -> np.ndarray:
    """A (10, 2) region-side table at `fill` except the named entries, e.g. M2_left=-1.5."""
    t = np.full((10, 2), fill)
    for key, v in by_region_side.items():
        name, side = key.rsplit("_", 1)
        t[REGION_NAMES.index(name), ("left", "right").index(side)] = v
    return t


def _differences(**by_region_side) -> np.ndarray:
    """Density differences: zero (symmetric) except the named ones."""
    return _table(0.0, **by_region_side)


def test_density_rule_pools_evidence_over_neighbouring_regions():
    from runtime.score import density_calls
    called = density_calls(_differences(I_left=-2.0, M2_left=-1.5, M6_left=-1.5, L_right=-1.5), 1.8, 1.3)
    names = {f"{REGION_NAMES[r]} {('left', 'right')[s]}" for r, s in zip(*np.nonzero(called))}
    # M2 touches the insula: pooled. M6 does not touch a called region, nor does the right L: not called.
    assert names == {"I left", "M2 left"}
    # Pooling does not chain: a region called only through a neighbour lends nothing further.
    chain = density_calls(_differences(I_left=-2.0, M2_left=-1.5, M5_left=-1.5), 1.8, 1.3)
    assert not chain[REGION_NAMES.index("M5"), 0]
    # Equal thresholds: the plain rule. Not measurable (NaN): never called.
    assert density_calls(_differences(I_left=-2.0, M2_left=-1.5), 1.8, 1.8).sum() == 1
    assert not density_calls(np.full((10, 2), np.nan), 1.8, 1.3).any()


def _probabilities(**by_region_side) -> np.ndarray:
    """DA-Net probabilities: 0.05 (unaffected) except the named ones."""
    return _table(0.05, **by_region_side)


def test_the_network_adds_one_hop_beside_a_density_call_and_never_alone():
    """The DA-Net calls a region only beside a clear density call, when that region is also darker
    than its mirror; it never extends its own or the pooled calls, and never calls alone."""
    from dataclasses import replace

    from runtime.modelcard import load_model_set
    from runtime.score import DECIDED_BY, rule_calls
    rule = replace(load_model_set().classify_density, threshold_hu=1.8, neighbour_threshold_hu=1.4,
                   network_probability=0.6, network_threshold_hu=1.0)
    diffs = _differences(M6_left=-2.5, M3_left=-1.2, M5_left=-0.9, M2_left=-1.1, C_right=-1.5)
    probs = _probabilities(M6_left=0.99, M3_left=0.9, M5_left=0.99, M2_left=0.95, C_right=0.99, L_right=0.99)
    how = {f"{REGION_NAMES[r]} {('left', 'right')[s]}": DECIDED_BY[v]
           for (r, s), v in np.ndenumerate(rule_calls(diffs, probs, rule)) if v}
    # M3 beside M6: added. M5 beside M6 but only 0.9 HU darker: not. M2 beside M3, which the network
    # added: no chain. Right C and L: the network alone, with no density call beside them: never.
    assert how == {"M6 left": "density", "M3 left": "density+network"}
    assert not rule_calls(diffs, probs, replace(rule, network_probability=None))[REGION_NAMES.index("M3"), 0]
    assert not rule_calls(diffs, _probabilities(M3_left=0.5), rule)[REGION_NAMES.index("M3"), 0]
    # Beside a region called only through its neighbour (M2, pooled beside I): nothing, as for pooling.
    pooled = rule_calls(_differences(I_left=-2.0, M2_left=-1.5, M5_left=-1.2), _probabilities(M5_left=0.99), rule)
    assert [DECIDED_BY[v] for v in pooled[[3, 5, 8], 0]] == ["density", "density+neighbour", "density"]
    assert not pooled[REGION_NAMES.index("M5"), 0]


def test_calls_say_when_the_network_decided():
    from dataclasses import replace

    from runtime.density import RegionDensity
    from runtime.modelcard import load_model_set
    rule = replace(load_model_set().classify_density, threshold_hu=1.8, neighbour_threshold_hu=1.4,
                   network_probability=0.6, network_threshold_hu=1.0)
    diffs = {("M6", "left"): -2.5, ("M3", "left"): -1.2}
    densities = tuple(RegionDensity(name, side, 30.0 + diffs.get((name, side), 0.0), 30.0,
                                    diffs.get((name, side), 0.0), 0.0)
                      for name in REGION_NAMES for side in ("left", "right"))
    probs = {n: (0.95 if n in ("M6", "M3") else 0.05, 0.05) for n in REGION_NAMES}
    s = score(make_calls(probs, {n: True for n in REGION_NAMES}, {n: 0.5 for n in REGION_NAMES}, densities, rule))
    assert s.aspects == 8 and s.symptomatic_side == "left"
    assert {c.region: c.decided_by for c in s.calls if c.affected} == {"M6": "density", "M3": "density+network"}


def test_borderline_marks_the_calls_another_encoding_could_turn():
    """A call is borderline when it flips within BORDERLINE_HU of its evidence (or the DA-Net's within
    BORDERLINE_PROBABILITY), including a call that hangs on a borderline clear one beside it."""
    from dataclasses import replace

    from runtime.modelcard import load_model_set
    from runtime.score import BORDERLINE_HU, borderline_calls, rule_calls
    rule = replace(load_model_set().classify_density, threshold_hu=1.8, neighbour_threshold_hu=1.4,
                   network_probability=0.8, network_threshold_hu=0.4)

    def near(diffs, probs=None):
        probs = _probabilities() if probs is None else probs
        return {f"{REGION_NAMES[r]} {('left', 'right')[s]}"
                for r, s in zip(*np.nonzero(borderline_calls(diffs, probs, rule)))}

    assert near(_differences(I_left=-3.0)) == set()                                  # clear by 1.2 HU
    assert near(_differences(I_left=-1.8 - BORDERLINE_HU / 2)) == {"I left"}        # called, just
    assert near(_differences(I_left=-1.8 + BORDERLINE_HU / 2)) == {"I left"}        # not called, just
    # M2 pooled beside a clear I: firm at -1.9 HU; beside an I that is itself borderline, borderline too.
    assert near(_differences(I_left=-3.0, M2_left=-1.9)) == set()
    assert near(_differences(I_left=-1.9, M2_left=-1.9)) == {"I left", "M2 left"}
    # The DA-Net's hop at p 0.95 is firm (1.25 less in logit: 0.84, still over 0.8); at 0.9 (to 0.72) not.
    diffs = _differences(M6_left=-3.0, M3_left=-1.0)
    assert rule_calls(diffs, _probabilities(M3_left=0.95), rule)[REGION_NAMES.index("M3"), 0] == 3
    assert near(diffs, _probabilities(M3_left=0.95)) == set()
    assert near(diffs, _probabilities(M3_left=0.9)) == {"M3 left"}
    assert not near(np.full((10, 2), np.nan))                                           # nothing measurable


def test_density_measure_keeps_off_the_csf_border():
    """A region whose twin borders CSF: partial-volume voxels (20 HU) along the border make it read
    darker without erosion; with the card's 1 mm erosion the two sides read alike."""
    from dataclasses import replace

    from runtime.density import measure
    from runtime.modelcard import load_model_set
    from runtime.resample import ModelGrid
    rule = load_model_set().classify_density
    grid = ModelGrid(shape=(3, 40, 80), spacing=(0.5, 0.5, 5.0), origin=(0.0, 0.0, 0.0), slab=1)
    hu = np.full(grid.shape, 32.0, np.float32)
    labels = np.zeros(grid.shape, np.uint8)
    labels[:, 10:30, 45:60] = label_id(0, "left")
    labels[:, 10:30, 20:35] = label_id(0, "right")      # mirror of x 44..59
    hu[:, 10:30, 33:36] = 5.0                          # CSF beside the right region ...
    hu[:, 10:30, 32] = 20.0
    hu[:, 10:30, 36] = 20.0                            # ... with a partial-volume rim inside it
    uneroded = replace(rule, erode_mm=0.0)
    plain = {(r.region, r.side): r.difference_hu for r in measure(hu, labels, grid, uneroded).regions}
    eroded = {(r.region, r.side): r.difference_hu for r in measure(hu, labels, grid, rule).regions}
    assert plain["C", "right"] < -0.4
    assert abs(eroded["C", "right"]) < 0.05


def test_density_measure_box_changes_no_value(monkeypatch):
    """`measure` filters only the box around the regions; on a noisy head with sulcal bands and a
    lesion, one region near the grid's edge and one off-centre, every region's figures and the map on
    the regions are what filtering the whole grid gives."""
    from dataclasses import astuple

    from runtime import density
    from runtime.modelcard import load_model_set
    from runtime.regions import BRAIN_LABEL
    from runtime.resample import ModelGrid
    rule = load_model_set().classify_density
    grid = ModelGrid(shape=(6, 140, 160), spacing=(0.5, 0.5, 5.0), origin=(0.0, 0.0, 0.0), slab=1)
    rng = np.random.default_rng(0)
    hu = rng.normal(32.0, 4.0, grid.shape).astype(np.float32)
    hu[:, :, 10:150:9] -= 9.0                                   # sulcus-like bands
    labels = np.zeros(grid.shape, np.uint8)
    labels[1:5, 20:130, 8:152] = BRAIN_LABEL
    labels[2:4, 30:60, 100:120] = label_id(3, "left")            # off-centre, its twin at x 40-59
    labels[2:4, 30:60, 40:60] = label_id(3, "right")
    labels[1:3, 100:128, 135:150] = label_id(7, "left")          # within the filters' reach of the edge
    labels[1:3, 100:128, 10:25] = label_id(7, "right")
    hu[2:4, 35:55, 102:118] -= 5.0                               # a lesion
    boxed = density.measure(hu, labels, grid, rule)
    assert density.region_box(labels, grid, 2, rule.trough_mm) != (slice(None),) * 3
    monkeypatch.setattr(density, "region_box", lambda *a: (slice(None),) * 3)
    whole = density.measure(hu, labels, grid, rule)
    assert [astuple(r) for r in boxed.regions] == [astuple(r) for r in whole.regions]
    on_regions = density.is_region(labels)
    assert np.array_equal(boxed.asymmetry_hu[on_regions], whole.asymmetry_hu[on_regions])
    assert boxed.regions[2 * 3].difference_hu < -2.5                  # left I, the lesion


def _sulcus_grid():
    """Two mirrored regions (15 x 20 mm) in a slab of 32 HU brain."""
    from runtime.regions import BRAIN_LABEL
    from runtime.resample import ModelGrid
    grid = ModelGrid(shape=(3, 60, 120), spacing=(0.5, 0.5, 5.0), origin=(0.0, 0.0, 0.0), slab=1)
    hu = np.full(grid.shape, 32.0, np.float32)
    labels = np.full(grid.shape, BRAIN_LABEL, np.uint8)
    labels[:, 10:50, 65:95] = label_id(0, "left")
    labels[:, 10:50, 25:55] = label_id(0, "right")      # mirror of x 64..94
    return grid, hu, labels


def test_density_measure_leaves_out_sulcal_troughs():
    """Sulci averaged into a thick slab: 1.5 mm bands 10 HU darker, 5 mm apart, inside the parenchyma
    window, on one side only. Without the trough filter that side reads darker than its twin; with the card's
    filter the two sides read alike, and a broad lesion across the whole region still reads at its
    full drop."""
    from dataclasses import replace

    from runtime.density import measure
    from runtime.modelcard import load_model_set
    rule = load_model_set().classify_density
    assert rule.trough_mm > 0 and rule.trough_hu > 0
    grid, hu, labels = _sulcus_grid()
    for x in (29, 39, 49):
        hu[:, 12:48, x:x + 3] = 22.0                      # three bands in the right region

    def right_c(h, card):
        return {(r.region, r.side): r.difference_hu for r in measure(h, labels, grid, card).regions}["C", "right"]

    no_filter = replace(rule, trough_mm=0.0, trough_hu=0.0)
    assert right_c(hu, no_filter) < -0.8
    assert abs(right_c(hu, rule)) < 0.1
    lesion = np.where(labels == label_id(0, "right"), hu - 4.0, hu)
    lesion_only = np.where(labels == label_id(0, "right"), 28.0, 32.0).astype(np.float32)
    assert right_c(lesion_only, rule) == pytest.approx(-4.0, abs=0.05)
    assert right_c(lesion, rule) == pytest.approx(-4.0, abs=0.1)
