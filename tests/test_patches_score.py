"""Mirrored-patch batching and ASPECTS arithmetic."""

from __future__ import annotations

import numpy as np

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


def test_threshold_is_inclusive_and_unassessed_regions_do_not_deduct():
    probs = {n: (0.5, 0.49) for n in REGION_NAMES}
    calls = make_calls(probs, {n: n != "M6" for n in REGION_NAMES}, {n: 0.5 for n in REGION_NAMES})
    s = score(calls)
    assert s.left == 1                      # 9 assessed left regions at p == threshold
    assert s.right == 10
    assert s.not_assessed == ("left M6", "right M6")


def test_tie_goes_to_the_side_with_stronger_evidence():
    probs = {n: (0.1, 0.1) for n in REGION_NAMES}
    probs["C"], probs["M3"] = (0.6, 0.1), (0.1, 0.95)
    s = score(make_calls(probs, {n: True for n in REGION_NAMES}, {n: 0.5 for n in REGION_NAMES}))
    assert s.left == s.right == 9 and s.symptomatic_side == "right"
    assert isinstance(s.calls[0], RegionCall)
