"""The CPU engines: OpenVINO against ONNX Runtime fp32, network by network and study by study.

ONNX Runtime is the default and always installed; OpenVINO is the `openvino` extra
(installed by `.[dev]`, so CI runs these). Parity means: every output within
runtime.parity's fp32 tolerances on the bundled study's own inputs and a random
full batch, and the same ASPECTS and calls on the bundled and real studies.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from runtime.errors import DeviceUnavailable
from runtime.parity import run_parity
from tests.conftest import DEMO_STUDY


@pytest.fixture(scope="module")
def openvino_scorer():
    pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install -e '.[openvino]')")
    from runtime.cpu import CpuScorer
    return CpuScorer(engine="openvino")


def test_openvino_networks_and_bundled_study_match_onnx_runtime(openvino_scorer):
    results, study = run_parity(candidate="openvino")
    assert {r.role for r in results} == {"segment_coarse", "segment_fine", "classify_subcortical",
                                         "classify_cortical"}
    for r in results:
        assert r.passed, r
    assert study["passed"], study
    assert study["candidate"].startswith("cpu (openvino")


def _same_calls(a, b) -> None:
    assert a.score.aspects == b.score.aspects and a.score.affected == b.score.affected
    for x, y in zip(a.classifications, b.classifications):
        np.testing.assert_allclose(x.probability, y.probability, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("sub", ["sub002", "sub003", "sub005"])
def test_openvino_same_calls_on_real_studies(real_data, scorer, openvino_scorer, sub):
    path = real_data / f"{sub}_im.nii.gz"
    if not path.exists():
        pytest.skip(f"{path.name} is not in this copy of the shared data")
    _same_calls(scorer.score(path), openvino_scorer.score(path))


def test_openvino_report_names_its_engine(openvino_scorer):
    result = openvino_scorer.score(DEMO_STUDY)
    assert result.metadata["device"].startswith("cpu (openvino ")


def test_missing_openvino_is_one_clear_error(monkeypatch):
    from runtime.engine import OpenVinoEngine
    from runtime.modelcard import load_model_set
    monkeypatch.setitem(sys.modules, "openvino", None)          # import openvino now raises ImportError
    with pytest.raises(DeviceUnavailable, match="openvino extra|aspects-rt\\[openvino\\]"):
        OpenVinoEngine(load_model_set().classify_cortical)


def test_unknown_engine_is_refused():
    """$ASPECTS_ENGINE reaches here unchecked by argparse: a usage error, not an internal one."""
    from runtime.engine import cpu_engine
    from runtime.errors import UsageError
    from runtime.modelcard import load_model_set
    with pytest.raises(UsageError, match="unknown CPU engine 'tflite'"):
        cpu_engine(load_model_set().classify_cortical, "tflite")
