"""TensorRT engines and the whole GPU path on a real GPU. Skipped, with the reason,
wherever there is no NVIDIA GPU or no TensorRT; the same stage code is tested on the
CPU emulation in test_gpu_kernels.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import DEMO_STUDY, ROOT, assert_same_calls


@pytest.fixture(scope="module")
def gpu_scorer():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'aspects-rt[gpu]')")
    from runtime.errors import DeviceUnavailable
    from runtime.gpu.pipeline import GpuScorer
    try:
        return GpuScorer()
    except DeviceUnavailable as exc:
        pytest.skip(f"GPU path unavailable: {exc}")


def test_engine_cache_is_keyed_and_hash_checked(gpu_scorer):
    from runtime.gpu import engine_cache
    from runtime.modelcard import DEFAULT_MODEL_DIR
    dev = gpu_scorer.gpu
    for card in gpu_scorer.models.cards:
        key = engine_cache.engine_key(card, dev.name, dev.compute_capability)
        path = engine_cache.plan_path(card, key, DEFAULT_MODEL_DIR)
        assert path.exists() and key.digest in path.name
        assert engine_cache.load_plan(card, key, DEFAULT_MODEL_DIR) == path.read_bytes()
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["onnx_sha256"] == card.sha256_fp16 and meta["gpu"] == dev.name


def test_tampered_engine_is_rebuilt_not_loaded(gpu_scorer, tmp_path, monkeypatch):
    from runtime.gpu import engine_cache
    from runtime.modelcard import DEFAULT_MODEL_DIR
    monkeypatch.setenv("ASPECTS_ENGINE_CACHE", str(tmp_path))
    card = gpu_scorer.models.classify_cortical
    dev = gpu_scorer.gpu
    first = engine_cache.get_plan(card, dev.name, dev.compute_capability, DEFAULT_MODEL_DIR)
    key = engine_cache.engine_key(card, dev.name, dev.compute_capability)
    path = engine_cache.plan_path(card, key, DEFAULT_MODEL_DIR)
    path.write_bytes(first[:-16] + bytes(16))
    assert engine_cache.load_plan(card, key, DEFAULT_MODEL_DIR) is None
    engine_cache.get_plan(card, dev.name, dev.compute_capability, DEFAULT_MODEL_DIR)
    assert engine_cache.load_plan(card, key, DEFAULT_MODEL_DIR) is not None


def test_engine_parity_with_onnx_runtime(gpu_scorer):
    from runtime.parity import run_parity
    results, study = run_parity()
    for r in results:
        assert r.passed, r
    assert study["passed"], study


def test_gpu_scores_demo_like_cpu(gpu_scorer, demo_result):
    got = gpu_scorer.score(DEMO_STUDY)
    assert (got.labels != demo_result.labels).mean() < 0.01
    # A borderline call may fall either way: parity is judged on the evidence.
    assert_same_calls(got, demo_result, tolerance_hu=0.1)


def test_gpu_benchmark_refuses_clearly_without_gpu():
    """The benchmark script is one command; where it cannot run it says why and exits non-zero."""
    from runtime.errors import DeviceUnavailable
    try:
        from runtime.gpu.device import CudaDevice
        CudaDevice()
        pytest.skip("a GPU is present: the benchmark runs instead (see benchmarks/RESULTS.md)")
    except DeviceUnavailable:
        pass
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_benchmark.py"), "--out",
                          str(ROOT / "build" / "never.json")], capture_output=True, text=True)
    assert run.returncode == 12 and run.stderr.startswith("error:")
    assert not (ROOT / "build" / "never.json").exists()


@pytest.mark.parametrize("action", ["build", "parity"])
def test_engine_commands_refuse_clearly_without_gpu(action):
    from runtime.errors import DeviceUnavailable
    try:
        from runtime.gpu.device import CudaDevice
        CudaDevice()
        import tensorrt  # noqa: F401
        pytest.skip("a GPU and TensorRT are present: the engine commands run instead")
    except (DeviceUnavailable, ImportError):
        pass
    run = subprocess.run([sys.executable, "-m", "runtime.cli", "engines", action], capture_output=True, text=True,
                         cwd=ROOT)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 12 and len(lines) == 1 and lines[0].startswith("error:"), run.stderr
