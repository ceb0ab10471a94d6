"""Inference engines behind one small interface.

The CPU engine is ONNX Runtime on the fp32 ONNX file; the GPU path (TensorRT)
implements the same `run`. Every engine checks the model file's hash against
its card before loading and checks tensor names against the card.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .errors import ModelError
from .modelcard import ModelCard, verify_file
from .threads import resolve


class Engine(Protocol):
    card: ModelCard

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...


class OnnxRuntimeEngine:
    """fp32 ONNX Runtime on the CPU, on `threads` cores (runtime.threads)."""

    def __init__(self, card: ModelCard, threads: int | None = None):
        import onnxruntime as ort

        self.card = card
        path = verify_file(card)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = resolve(threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{card.name}: ONNX Runtime cannot load {path.name} ({exc})") from None
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if names_in != [t.name for t in card.inputs] or names_out != [t.name for t in card.outputs]:
            raise ModelError(f"{card.name}: model tensors {names_in} -> {names_out} do not match its card")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for spec in self.card.inputs:
            x = inputs[spec.name]
            if x.ndim != len(spec.shape) or any(isinstance(d, int) and d != s for d, s in zip(spec.shape, x.shape)):
                raise ModelError(f"{self.card.name}: input {spec.name} has shape {x.shape}, card says {spec.shape}")
        outputs = self.session.run(None, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()})
        return {spec.name: out for spec, out in zip(self.card.outputs, outputs)}
