"""The real NCCT studies in ../shared/data/real: every stage runs on real anatomy.

The expert reads are checked by `python -m export.evaluate real --loo` (leave-one-out,
engines/README.md); here every stage must run and the report must carry the evidence.
"""

from __future__ import annotations

import json

import pytest

from runtime.report import write_report
from runtime.result import STAGES


@pytest.mark.parametrize("sub", ["sub003", "sub005"])
def test_real_study_runs_every_stage(real_data, scorer, tmp_path, sub):
    result = scorer.score(real_data / f"{sub}_im.nii.gz")
    assert [s for s, _ in result.timings] == list(STAGES) and all(t > 0 for _, t in result.timings)
    assert result.alignment.symmetry > 0.6
    assert 900 < result.metadata["brain_ml"] < 2000
    assert all(c.assessed for c in result.score.calls), result.score.not_assessed
    paths = write_report(result, tmp_path / sub)
    doc = json.loads(paths["report"].read_text())
    assert doc["aspects"] == result.score.aspects
    assert all(r["density_difference_hu"] is not None and r["hypodense_ml"] is not None for r in doc["regions"])
    print(f"{sub}: ASPECTS {doc['aspects']} affected {doc['affected_regions']} in {doc['timings_s']['total']:.1f}s")


def test_mirrored_real_stroke_is_scored_on_the_other_side(real_data, scorer):
    """sub003 (expert: right L) mirrored left to right: the same score, on the left."""
    from export.stability import Variant, varied
    from runtime.read import read_study
    study = read_study(real_data / "sub003_im.nii.gz")
    as_read = scorer.score(study).score
    mirrored = scorer.score(varied(study, Variant("mirrored", mirrored=True))).score
    assert as_read.symptomatic_side == "right" and mirrored.symptomatic_side == "left"
    assert abs(as_read.aspects - mirrored.aspects) <= 1
    assert "left L" in mirrored.affected
