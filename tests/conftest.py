from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
DEMO_STUDY = ROOT / "runtime" / "data" / "default_study.nii.gz"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "atlas").is_dir() or not (SHARED_DATA / "template").is_dir():
        pytest.skip(f"needs the atlas and CT template in {SHARED_DATA} (not shipped; see README)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_data() -> Path:
    real = SHARED_DATA / "real"
    if not (real / "sub003_im.nii.gz").exists():
        pytest.skip(f"needs the two real NCCT studies in {real} (internal test data, not shipped)")
    return real


@pytest.fixture(scope="session")
def demo_study():
    from runtime.read import read_study
    return read_study(DEMO_STUDY)


@pytest.fixture(scope="session")
def scorer():
    from runtime.cpu import CpuScorer
    return CpuScorer()


@pytest.fixture(scope="session")
def demo_result(scorer):
    return scorer.score(DEMO_STUDY)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_same_calls(a, b, tolerance_hu: float) -> None:
    """Two scorings of the same anatomy (other encoding, other device): density differences within
    `tolerance_hu`, the same call wherever neither scoring reports it borderline (runtime.score:
    a call that flips within what re-encoding the same head moves the evidence may fall either way),
    and scores within one point."""
    for ca, cb in zip(a.score.calls, b.score.calls, strict=True):
        if ca.difference_hu is None or cb.difference_hu is None:     # not measurable: on both, never called
            assert ca.difference_hu is cb.difference_hu is None and not (ca.affected or cb.affected), (ca, cb)
            continue
        assert ca.difference_hu == pytest.approx(cb.difference_hu, abs=tolerance_hu), (ca, cb)
        assert ca.affected == cb.affected or ca.borderline or cb.borderline, (ca, cb)
    assert abs(a.score.aspects - b.score.aspects) <= 1
