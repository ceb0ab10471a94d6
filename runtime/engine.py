"""Inference engines behind one small interface.

The CPU engines run the fp32 ONNX file: ONNX Runtime (the default, always
installed) or OpenVINO (the `openvino` extra; the DA-Net stage 1.3x faster on
the build machine, benchmarks/RESULTS.md). The GPU path (TensorRT) implements the
same `run`. Every engine checks the model file's hash against its card before
loading and checks tensor names against the card.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .errors import DeviceUnavailable, ModelError, UsageError
from .modelcard import ModelCard, verify_file
from .threads import resolve


class Engine(Protocol):
    card: ModelCard

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...


CPU_ENGINES = ("onnxruntime", "openvino")
ENV = "ASPECTS_ENGINE"


def cpu_engine(card: ModelCard, name: str, threads: int | None = None) -> Engine:
    """`name`: one of CPU_ENGINES."""
    if name == "onnxruntime":
        return OnnxRuntimeEngine(card, threads)
    if name == "openvino":
        return OpenVinoEngine(card, threads)
    raise UsageError(f"unknown CPU engine {name!r} (--engine, or ${ENV}): use one of {', '.join(CPU_ENGINES)}")


def engine_version(name: str) -> str:
    """The engine and its package version, as the report names it."""
    import importlib.metadata

    return f"{name} {importlib.metadata.version(name)}"


def _check_inputs(card: ModelCard, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for spec in card.inputs:
        x = inputs[spec.name]
        if x.ndim != len(spec.shape) or any(isinstance(d, int) and d != s for d, s in zip(spec.shape, x.shape)):
            raise ModelError(f"{card.name}: input {spec.name} has shape {x.shape}, card says {spec.shape}")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}


def _check_names(card: ModelCard, names_in: list[str], names_out: list[str]) -> None:
    if names_in != [t.name for t in card.inputs] or names_out != [t.name for t in card.outputs]:
        raise ModelError(f"{card.name}: model tensors {names_in} -> {names_out} do not match its card")


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
        _check_names(card, [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, _check_inputs(self.card, inputs))
        return {spec.name: out for spec, out in zip(self.card.outputs, outputs)}


class OpenVinoEngine:
    """OpenVINO on the CPU, fp32 (its default on CPUs with bf16 or AMX units would be bf16: the
    precision is pinned so parity with ONNX Runtime holds), on `threads` cores."""

    def __init__(self, card: ModelCard, threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise DeviceUnavailable("the OpenVINO engine is not installed "
                                    "(pip install 'aspects-rt[openvino]')") from None
        self.card = card
        path = verify_file(card)
        config = {"INFERENCE_NUM_THREADS": resolve(threads), "INFERENCE_PRECISION_HINT": "f32",
                  "PERFORMANCE_HINT": "LATENCY"}
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises its own exception types
            raise ModelError(f"{card.name}: OpenVINO cannot load {path.name} ({exc})") from None
        # A tensor may carry several names in OpenVINO; use the card's where the model has it.
        _check_names(card, [_name(i, card.inputs) for i in self.compiled.inputs],
                     [_name(o, card.outputs) for o in self.compiled.outputs])
        self.request = self.compiled.create_infer_request()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.request.infer(_check_inputs(self.card, inputs))
        # The request reuses its output memory on the next call: hand out copies.
        return {spec.name: np.array(result[out]) for spec, out in zip(self.card.outputs, self.compiled.outputs)}


def _name(port, specs) -> str:
    names = port.get_names()
    return next((t.name for t in specs if t.name in names), port.get_any_name())
