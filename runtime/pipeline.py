"""Pick a path: `make_scorer` returns the CPU path (runtime.cpu) or the GPU path
(runtime.gpu.pipeline); both return the same StudyResult (runtime.result)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from .errors import DeviceUnavailable
from .modelcard import DEFAULT_MODEL_DIR, ModelSet
from .read import Study
from .result import StudyResult

DEFAULT_STUDY = Path(__file__).resolve().parent / "data" / "default_study.nii.gz"


class Scorer(Protocol):
    models: ModelSet
    device: str

    def score(self, source: str | os.PathLike | Study) -> StudyResult:
        ...


def make_scorer(model_dir: str | os.PathLike = DEFAULT_MODEL_DIR, device: str = "cpu") -> Scorer:
    """'cpu' (ONNX Runtime) or 'gpu' (TensorRT + CUDA kernels). The GPU path raises
    DeviceUnavailable with the reason when this machine cannot run it."""
    if device == "cpu":
        from .cpu import CpuScorer
        return CpuScorer(model_dir)
    if device == "gpu":
        from .gpu.pipeline import GpuScorer
        return GpuScorer(model_dir)
    raise DeviceUnavailable(f"unknown device {device!r}; use cpu or gpu")
