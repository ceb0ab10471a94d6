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
