"""The two real NCCT studies in ../shared/data/real: every stage runs on real anatomy.

Expert reads (sub003: ASPECTS 9, right L; sub005: 10) are printed for the record but
not asserted: the shipped models are trained on synthetic data only, and the
project's rule is not to tune to these two studies.
"""

from __future__ import annotations

import json

import pytest

from runtime.report import write_report

STAGES = ("read", "align", "resample", "skull_strip", "segment", "batch", "classify", "score")


@pytest.mark.parametrize("sub", ["sub003", "sub005"])
def test_real_study_runs_every_stage(real_data, scorer, tmp_path, sub):
    result = scorer.score(real_data / f"{sub}_im.nii.gz")
    assert all(result.timings[s] > 0 for s in STAGES)
    assert result.alignment.symmetry > 0.6
    assert 900 < result.metadata["brain_ml"] < 2000
    assert all(c.assessed for c in result.score.calls), result.score.not_assessed
    paths = write_report(result, tmp_path / sub)
    doc = json.loads(paths["report"].read_text())
    assert doc["aspects"] == result.score.aspects
    print(f"{sub}: ASPECTS {doc['aspects']} affected {doc['affected_regions']} in {doc['timings_s']['total']:.1f}s")
