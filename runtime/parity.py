"""`aspects engines parity`: every TensorRT engine (or, with `--engine openvino`, every
OpenVINO network) against ONNX Runtime fp32, then the whole path against the ONNX
Runtime CPU path on the bundled study.

Inputs are the bundled study's own network inputs (what the engines really see),
plus seeded random inputs for the classifiers at the largest batch. Tolerances
are set from the fp16 graphs' own error on ONNX Runtime (coarse VB-Net logits
0.0095, DA-Net probability 0.0013, CAM 0.076 on the bundled study) with room for
TensorRT's different kernels; past them the command fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cpu import CpuScorer
from .engine import OnnxRuntimeEngine
from .errors import ParityFailure
from .modelcard import DEFAULT_MODEL_DIR
from .preprocess import preprocess_grid
from .result import CLASSIFIER_ROLES
from .shipped import DEFAULT_STUDY
from .volume import block_mean, pad_z

if TYPE_CHECKING:
    from .gpu.pipeline import GpuScorer

MAX_ABS_ERROR = {"probabilities": 0.1, "probability": 0.01, "cam": 0.25}
# OpenVINO runs the same fp32 graph: only kernel order and fused operations differ.
FP32_MAX_ABS_ERROR = {"probabilities": 1e-3, "probability": 1e-3, "cam": 1e-3}
MIN_ARGMAX_AGREEMENT = 0.995          # segmentation classes, per voxel
SEED = 20221101


@dataclass(frozen=True)
class ParityResult:
    role: str
    input_shape: tuple[int, ...]
    max_abs_error: dict[str, float]
    argmax_agreement: float | None
    passed: bool


def compare(role: str, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], shape,
            tolerance: dict[str, float] = MAX_ABS_ERROR) -> ParityResult:
    errors = {k: float(np.abs(reference[k] - got[k]).max()) for k in reference}
    agreement = None
    ok = all(errors[k] <= tolerance[k] for k in errors)
    if role.startswith("segment"):
        (ref,), (out,) = reference.values(), got.values()
        agreement = float((ref.argmax(1) == out.argmax(1)).mean())
        ok = ok and agreement >= MIN_ARGMAX_AGREEMENT
    return ParityResult(role, tuple(shape), errors, agreement, ok)


def engine_inputs(scorer: CpuScorer) -> dict[str, list[np.ndarray]]:
    """Real inputs from the bundled study, plus a random full-size classifier batch."""
    result = scorer.score(DEFAULT_STUDY)
    image = preprocess_grid(result.hu, result.grid, scorer.models.window).image
    coarse = scorer.models.segment_coarse
    x = block_mean(image, coarse.input_stride)
    x = pad_z(x, coarse.z_multiple, -1.0)
    fine = scorer.models.segment_fine
    fx, fy = fine.fine_crop_xy
    f = block_mean(image, fine.input_stride)
    z = f.shape[0] - f.shape[0] % fine.z_multiple
    y0, x0 = (f.shape[1] - fy) // 2, (f.shape[2] - fx) // 2
    rng = np.random.default_rng(SEED)
    inputs = {"segment_coarse": [x[None, None]], "segment_fine": [f[:z, y0:y0 + fy, x0:x0 + fx][None, None]]}
    for batch, role in zip(result.batches, CLASSIFIER_ROLES):
        if batch.pairs is None:
            raise ValueError("the CPU path always keeps its pairs")
        rand = rng.uniform(-1, 1, (32, *batch.pairs.shape[1:])).astype(np.float32)
        rand[:, :, 1] = rand[:, :, 1] > 0.5
        inputs[role] = [batch.pairs, rand]
    return inputs


def run_parity(model_dir: Path = DEFAULT_MODEL_DIR, candidate: str = "tensorrt"
               ) -> tuple[list[ParityResult], dict]:
    """`candidate`: "tensorrt" (the GPU path) or a CPU engine other than ONNX Runtime ("openvino")."""
    cpu = CpuScorer(model_dir)
    other: CpuScorer | GpuScorer
    if candidate == "tensorrt":
        from .gpu.pipeline import GpuScorer
        other, tolerance = GpuScorer(model_dir), MAX_ABS_ERROR
    else:
        other, tolerance = CpuScorer(model_dir, engine=candidate), FP32_MAX_ABS_ERROR
    results = []
    for role, arrays in engine_inputs(cpu).items():
        reference = OnnxRuntimeEngine(getattr(cpu.models, role))
        for x in arrays:
            name = reference.card.inputs[0].name
            results.append(compare(role, reference.run({name: x.astype(np.float32)}),
                                   other.engines[role].run({name: x.astype(np.float32)}), x.shape, tolerance))
    a, b = cpu.score(DEFAULT_STUDY), other.score(DEFAULT_STUDY)
    study = {"reference": a.metadata["device"], "candidate": b.metadata["device"],
             "reference_aspects": a.score.aspects, "candidate_aspects": b.score.aspects,
             "reference_affected": list(a.score.affected), "candidate_affected": list(b.score.affected),
             "label_disagreement": float((a.labels != b.labels).mean()),
             "passed": a.score.aspects == b.score.aspects and a.score.affected == b.score.affected}
    return results, study


def main(model_dir: Path, candidate: str = "tensorrt") -> int:
    results, study = run_parity(model_dir, candidate)
    for r in results:
        print(json.dumps(r.__dict__, default=list))
    print(json.dumps({"bundled_study": study}))
    failed = [r.role for r in results if not r.passed] + ([] if study["passed"] else ["bundled study ASPECTS"])
    if failed:
        raise ParityFailure(f"{candidate} parity FAILED for {', '.join(failed)} (argmax agreement >= "
                            f"{MIN_ARGMAX_AGREEMENT}; tolerances in runtime/parity.py)")
    print(f"engine parity: every {candidate} network within tolerance of ONNX Runtime fp32; bundled study ASPECTS "
          "and calls identical")
    return 0
