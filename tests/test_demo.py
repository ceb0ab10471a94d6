"""The bundled demo: its truth file, and what the runtime makes of it.

The demo's truth is the synthetic generator's (export/make_demo.py); the runtime
is not tuned to it (its thresholds come from the calibration studies). Asserted:
what a user must be able to rely on (the right side, no region called that the
truth does not hold, a truth that does not depend on how the regions are drawn)
and issue 8's target, the score within +-1 of the truth.
"""

from __future__ import annotations

import json

from runtime.regions import REGION_NAMES, SIDES
from runtime.score import aspects_of

from .conftest import DEMO_STUDY

TRUTH = json.loads(DEMO_STUDY.with_name("default_study_truth.json").read_text())


def test_truth_file_is_consistent():
    table = [TRUTH["affected"].get(r, [False, False]) for r in REGION_NAMES]
    assert TRUTH["aspects"] == int(aspects_of(table))
    assert TRUTH["side"] == "left" and all(not right for _, right in TRUTH["affected"].values())


def test_runtime_calls_only_truly_affected_regions_on_the_truths_side(demo_result):
    score = demo_result.score
    assert score.symptomatic_side == TRUTH["side"]
    assert abs(score.aspects - TRUTH["aspects"]) <= 1
    called = {(c.region, c.side) for c in score.calls if c.affected}
    truly = {(r, side) for r, flags in TRUTH["affected"].items() for side, f in zip(SIDES, flags) if f}
    assert called and called <= truly


def test_demo_truth_is_the_same_in_both_region_drawings(shared_data):
    from export import make_demo, synth
    from runtime.shipped import DEFAULT_MODEL_DIR
    phantom = synth.load_phantom(shared_data)
    case = make_demo.candidate_case(phantom, TRUTH["lesion"]["candidate"])
    expert = make_demo.clear_truth(case, synth.expert_regions(phantom, DEFAULT_MODEL_DIR / "region_atlas.npz"))
    assert expert is not None
    assert case.aspects == TRUTH["aspects"]
    assert {r for r, (flags, _) in expert.items() if any(flags)} == set(TRUTH["affected"])


def test_borderline_flags_are_the_rule_at_the_reported_evidence(demo_result, scorer):
    """The report's borderline flags are runtime.score.borderline_calls on the very numbers it reports."""
    import numpy as np

    from runtime.score import borderline_calls
    by = {(c.region, c.side): c for c in demo_result.score.calls}

    def table(attr):
        return np.array([[getattr(by[r, s], attr) for s in SIDES] for r in REGION_NAMES])

    expected = borderline_calls(table("difference_hu").astype(float), table("probability").astype(float),
                                scorer.models.classify_density)
    np.testing.assert_array_equal(table("borderline"), expected)
