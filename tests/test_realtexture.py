"""Real-textured DA-Net cases (export.realtexture): lesions added to a head's own voxels."""

from __future__ import annotations

import numpy as np
import pytest

from export.config import CLASSIFIER_CROP
from export.realtexture import CORE_RULE, Background, insert_lesion, lesion_regions, make_case
from export.train import load_cases
from runtime.regions import NEIGHBOURS, REGION_NAMES, SIDES, label_id


def toy_background(stroke_side: str | None) -> Background:
    """Ten region blocks per side, mirrored through the midline, in 30 HU parenchyma with noise."""
    rng = np.random.default_rng(7)
    z, y, x = 6, 80, 64
    hu = (30.0 + rng.normal(0, 3, (z, y, x))).astype(np.float32)
    labels = np.zeros((z, y, x), np.uint8)
    for r in range(len(REGION_NAMES)):
        rows = slice(8 * r, 8 * r + 8)
        labels[:, rows, 4:28] = label_id(r, "left")      # model space: patient left on image x < mid
        labels[:, rows, 36:60] = label_id(r, "right")
    truth = np.zeros((len(REGION_NAMES), len(SIDES)), bool)
    if stroke_side:
        truth[REGION_NAMES.index("L"), SIDES.index(stroke_side)] = True
    brain = np.ones_like(labels, bool)
    brain[:, :, :2] = brain[:, :, -2:] = False
    return Background("toy", hu, brain, labels, truth, (0.5, 0.5, 5.0))


def test_lesion_regions_are_a_contiguous_territory():
    for seed in range(40):
        chosen = lesion_regions(np.random.default_rng(seed))
        assert 1 <= len(chosen) <= 6 and len(set(chosen)) == len(chosen)
        for i, name in enumerate(chosen[1:], start=1):
            assert any(name in NEIGHBOURS[prev] for prev in chosen[:i])


@pytest.mark.parametrize("stroke_side", ["left", "right"])
def test_lesions_join_the_read_stroke_and_follow_the_ten_percent_rule(stroke_side):
    bg = toy_background(stroke_side)
    s = SIDES.index(stroke_side)
    other = 1 - s
    lesioned = 0
    for seed in range(12):
        hu, core, truth = insert_lesion(bg, np.random.default_rng(seed))
        assert truth[REGION_NAMES.index("L"), s]                       # the expert's read stays
        assert not truth[:, other].any()                                # nothing on the twin side
        for r in range(len(REGION_NAMES)):
            region = bg.labels == label_id(r, SIDES[s])
            by_rule = (core & region).sum() / region.sum() >= CORE_RULE
            assert truth[r, s] == (by_rule or bg.truth[r, s])
            twin = bg.labels == label_id(r, SIDES[other])
            assert not (core & twin).any()
        if core.any():
            lesioned += 1
            assert hu[core].mean() < bg.hu[core].mean() - 1.0            # darker where the core is
            assert np.array_equal(hu[~bg.brain], bg.hu[~bg.brain])
    assert lesioned >= 6


def test_a_case_is_what_the_classifier_trainer_loads(tmp_path):
    info = make_case(toy_background(None), 3, tmp_path)
    assert info["background"] == "toy"
    (case,) = load_cases(tmp_path, ("pairs", "hypo", "affected"))
    assert case["pairs"].shape == (len(REGION_NAMES), 2, 2, *CLASSIFIER_CROP)
    assert case["hypo"].shape == (len(REGION_NAMES), 2, *CLASSIFIER_CROP)
    assert case["affected"].shape == (len(REGION_NAMES), len(SIDES))
    assert not list(tmp_path.glob("*.tmp.npz"))
