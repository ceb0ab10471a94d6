"""One thread setting reaches every stage; the default is what the process may really use."""

from __future__ import annotations

import os

import pytest
import SimpleITK as sitk
from threadpoolctl import threadpool_info

from runtime import threads


def test_default_is_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    n = threads.available_cores()
    assert 1 <= n <= (os.cpu_count() or 1)
    assert n <= len(os.sched_getaffinity(0))
    assert threads.resolve() == n


def _blas_threads() -> set[int]:
    import numpy as np  # noqa: F401  (loads the BLAS threadpoolctl reports)
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_one_setting_reaches_onnx_runtime_simpleitk_and_blas(monkeypatch):
    from runtime.engine import OnnxRuntimeEngine
    from runtime.modelcard import load_model_set
    monkeypatch.setenv(threads.ENV, "1")
    card = load_model_set().classify_cortical
    engine = OnnxRuntimeEngine(card)
    assert engine.session.get_session_options().intra_op_num_threads == 1
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
    assert _blas_threads() <= {1}
    assert threads.resolve(2) == 2 and sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 2
    assert _blas_threads() <= {2}


def test_one_setting_reaches_openvino(monkeypatch):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from runtime.engine import OpenVinoEngine
    from runtime.modelcard import load_model_set
    monkeypatch.setenv(threads.ENV, "1")
    engine = OpenVinoEngine(load_model_set().classify_cortical)
    assert int(engine.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
