"""A CPU stand-in for runtime.gpu's device and engines, so the GPU stage code runs here.

The kernels are runtime/gpu/kernels.cu itself, compiled by g++ with
gpu_emulation.h as one-thread C++; buffers are numpy arrays filled with a
poison byte, so a kernel that reads memory nobody wrote shows up as a
mismatch. Engines are ONNX Runtime on the buffers' host arrays.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from runtime.engine import OnnxRuntimeEngine
from runtime.gpu import kernels
from runtime.gpu.device import Buffer, kernel_args

HEADER = Path(__file__).with_name("gpu_emulation.h")
POISON = 0xA5


def build_library(out_dir: Path) -> Path | None:
    """Compile kernels.cu as C++; None when there is no g++."""
    gxx = shutil.which("g++")
    if gxx is None:
        return None
    lib = out_dir / "kernels_emulated.so"
    src = out_dir / "kernels_emulated.cu"
    src.write_bytes(kernels.source())
    subprocess.run([gxx, "-O2", "-shared", "-fPIC", "-std=c++17", "-include", str(HEADER), "-x", "c++",
                    str(src), "-o", str(lib)], check=True, capture_output=True)
    return lib


class EmulatedDevice:
    name = "cpu-emulation"

    def __init__(self, library: Path):
        self.lib = ctypes.CDLL(str(library))
        self._study: list[np.ndarray] = []
        self._persistent: list[np.ndarray] = []
        self.launches: list[str] = []

    def empty(self, shape, dtype, persistent: bool = False) -> Buffer:
        arr = np.full(tuple(int(s) for s in shape), 0, np.dtype(dtype))
        arr.view(np.uint8)[...] = POISON
        (self._persistent if persistent else self._study).append(arr)
        return Buffer(arr.ctypes.data, arr.shape, arr.dtype, host=arr)

    def put(self, array: np.ndarray) -> Buffer:
        buf = self.empty(array.shape, array.dtype)
        buf.host[...] = array
        return buf

    def write(self, buf: Buffer, array: np.ndarray) -> None:
        buf.host[...] = np.asarray(array, dtype=buf.dtype).reshape(buf.shape)

    def get(self, buf: Buffer) -> np.ndarray:
        return buf.host.copy()

    def fill(self, buf: Buffer, byte: int = 0) -> None:
        buf.host.view(np.uint8)[...] = byte

    def copy(self, dst: Buffer, src: Buffer) -> None:
        dst.host.view(np.uint8).reshape(-1)[:] = src.host.view(np.uint8).reshape(-1)

    def launch(self, name: str, work_items: int, **args) -> None:
        self.launches.append(name)
        getattr(self.lib, name)(*kernel_args(name, args))

    def launch_blocks(self, name: str, blocks: int, **args) -> None:
        self.launch(name, blocks, **args)

    def synchronize(self) -> None:
        pass

    def event(self) -> float:
        return time.perf_counter()

    def elapsed_ms(self, start: float, end: float) -> float:
        return (end - start) * 1000.0

    def release(self) -> None:
        self._study.clear()


class EmulatedEngine:
    """ONNX Runtime behind the TensorRT engine's device interface."""

    def __init__(self, card, device: EmulatedDevice):
        self.card, self.device = card, device
        self.cpu = OnnxRuntimeEngine(card, threads=2)
        self._io: dict[tuple, Buffer] = {}

    def input_buffer(self, shape) -> Buffer:
        shape = tuple(int(s) for s in shape)
        if shape not in self._io:
            self._io[shape] = self.device.empty(shape, np.float32, persistent=True)
        return self._io[shape]

    def run_device(self, inputs: dict[str, Buffer]) -> dict[str, Buffer]:
        out = self.cpu.run({k: v.host for k, v in inputs.items()})
        result = {}
        for name, arr in out.items():
            buf = self.device.empty(arr.shape, np.float32, persistent=True)
            buf.host[...] = arr
            result[name] = buf
        return result
