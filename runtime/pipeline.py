"""Pick a path: `make_scorer` returns the CPU path (runtime.cpu) or the GPU path
(runtime.gpu.pipeline); both return the same StudyResult (runtime.result)."""

from __future__ import annotations

import os
from typing import Callable, Protocol

from .errors import DeviceUnavailable
from .modelcard import ModelSet
from .read import Study
from .result import StudyResult
from .shipped import DEFAULT_MODEL_DIR


class Scorer(Protocol):
    models: ModelSet
    device_label: str          # what the report names: "cpu", "gpu (NVIDIA H100 ...)"
    on_stage: Callable[[str], None] | None     # told each stage name as it starts (terminal progress)

    def score(self, source: str | os.PathLike | Study) -> StudyResult:
        ...


def make_scorer(model_dir: str | os.PathLike = DEFAULT_MODEL_DIR, backend: str = "cpu",
                threads: int | None = None, engine: str | None = None) -> Scorer:
    """`backend`: 'cpu' or 'gpu' (TensorRT + CUDA kernels). The GPU path raises DeviceUnavailable
    with the reason when this machine cannot run it. `threads`: CPU cores for every stage (default:
    $ASPECTS_THREADS, else the cores this process may use). `engine`: the CPU engine, 'onnxruntime'
    or 'openvino' (default: $ASPECTS_ENGINE, else onnxruntime)."""
    if backend == "cpu":
        from .cpu import CpuScorer
        from .engine import ENV
        return CpuScorer(model_dir, threads=threads, engine=engine or os.environ.get(ENV) or "onnxruntime")
    if backend == "gpu" or backend.startswith("gpu:"):
        from .gpu.pipeline import GpuScorer
        from .threads import resolve
        resolve(threads)
        return GpuScorer(model_dir, ordinal=int(backend.partition(":")[2] or 0))
    raise DeviceUnavailable(f"unknown device {backend!r}; use cpu or gpu")
