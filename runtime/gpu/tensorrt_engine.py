"""A TensorRT engine on the device's stream, with the Engine interface of runtime.engine.

Inputs and outputs live in persistent device buffers, one set per input shape,
so the stages write straight into them and, once a shape has run, a CUDA graph
of the enqueue replays it without TensorRT's per-call host work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DeviceError, ModelError
from ..modelcard import ModelCard
from . import engine_cache
from .device import Buffer, CudaDevice


class TensorRTEngine:
    def __init__(self, card: ModelCard, device: CudaDevice, model_dir: Path, use_graphs: bool = True):
        self.card, self.device, self.use_graphs = card, device, use_graphs
        plan = engine_cache.get_plan(card, device.name, device.compute_capability, model_dir)   # checks TensorRT
        import tensorrt as trt

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ModelError(f"{card.name}: TensorRT could not load its cached engine; run `aspects engines build`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if inputs != [t.name for t in card.inputs] or sorted(outputs) != sorted(t.name for t in card.outputs):
            raise ModelError(f"{card.name}: engine tensors {inputs} -> {outputs} do not match its card")
        for n in names:
            if trt.nptype(self.engine.get_tensor_dtype(n)) != np.float32:
                raise ModelError(f"{card.name}: engine tensor {n} is not float32 (the card's I/O contract)")
        self._io: dict[tuple, dict[str, Buffer]] = {}      # input shape -> persistent I/O buffers
        self._graphs: dict[tuple, object] = {}             # input shape -> instantiated CUDA graph

    def input_buffer(self, shape) -> Buffer:
        """The persistent input buffer for this shape: kernels write the network input here."""
        return self._buffers(tuple(int(s) for s in shape))[self.card.inputs[0].name]

    def run_device(self, inputs: dict[str, Buffer]) -> dict[str, Buffer]:
        name = self.card.inputs[0].name
        shape = tuple(inputs[name].shape)
        io = self._buffers(shape)
        if inputs[name].ptr != io[name].ptr:
            self.device.copy(io[name], inputs[name])
        cu = self.device.cu
        if shape in self._graphs:
            self.device.check(cu.cuGraphLaunch(self._graphs[shape], self.device.stream), "cuGraphLaunch")
        else:
            self._bind(shape, io)
            self._enqueue()
            if self.use_graphs:
                self._capture(shape)
        return {t.name: io[t.name] for t in self.card.outputs}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Host arrays in and out (parity checks); the pipeline uses run_device."""
        name = self.card.inputs[0].name
        buf = self.input_buffer(inputs[name].shape)
        self.device.write(buf, inputs[name].astype(np.float32))
        out = self.run_device({name: buf})
        return {k: self.device.get(v) for k, v in out.items()}

    def _buffers(self, shape: tuple) -> dict[str, Buffer]:
        if shape not in self._io:
            name = self.card.inputs[0].name
            self.context.set_input_shape(name, shape)
            io = {name: self.device.empty(shape, np.float32, persistent=True)}
            for t in self.card.outputs:
                out_shape = tuple(self.context.get_tensor_shape(t.name))
                if any(d < 0 for d in out_shape):
                    raise ModelError(f"{self.card.name}: output {t.name} shape unresolved for input {shape}")
                io[t.name] = self.device.empty(out_shape, np.float32, persistent=True)
            self._io[shape] = io
        return self._io[shape]

    def _bind(self, shape: tuple, io: dict[str, Buffer]) -> None:
        self.context.set_input_shape(self.card.inputs[0].name, shape)
        for name, buf in io.items():
            self.context.set_tensor_address(name, buf.ptr)

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.device.stream_handle):
            raise DeviceError(f"{self.card.name}: TensorRT enqueue failed")

    def _capture(self, shape: tuple) -> None:
        """Record the enqueue for this shape into a CUDA graph (after one plain run, as TensorRT
        asks, so its lazy set-up is not captured)."""
        cu, dev = self.device.cu, self.device
        dev.check(cu.cuStreamBeginCapture(dev.stream, cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
                   "cuStreamBeginCapture")
        ok = self.context.execute_async_v3(dev.stream_handle)
        graph = dev.check(cu.cuStreamEndCapture(dev.stream), "cuStreamEndCapture")
        if not ok:
            self.use_graphs = False          # TensorRT refused capture: keep plain enqueues
            return
        self._graphs[shape] = dev.check(cu.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
