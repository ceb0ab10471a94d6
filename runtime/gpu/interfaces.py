"""What the GPU stages need from a device and from an engine. Three of each exist:
the CUDA device and TensorRT engines (runtime.gpu), the CPU emulation in the
tests, and the PyTorch engines of the GPU benchmark; the stage code sees only
these protocols."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..modelcard import ModelCard
from .device import Buffer


class Device(Protocol):
    name: str

    def empty(self, shape, dtype, persistent: bool = False) -> Buffer: ...

    def put(self, array: np.ndarray) -> Buffer: ...

    def write(self, buf: Buffer, array: np.ndarray) -> None: ...

    def get(self, buf: Buffer) -> np.ndarray: ...

    def fill(self, buf: Buffer, byte: int = 0) -> None: ...

    def copy(self, dst: Buffer, src: Buffer) -> None: ...

    def launch(self, name: str, work_items: int, **args) -> None:
        """A grid-stride kernel of runtime/gpu/kernels.cu over `work_items`, arguments by name."""

    def launch_blocks(self, name: str, blocks: int, **args) -> None: ...

    def event(self) -> Any: ...

    def elapsed_ms(self, start, end) -> float: ...

    def release(self) -> None:
        """Free what one study allocated (persistent buffers stay)."""


class DeviceEngine(Protocol):
    card: ModelCard

    def input_buffer(self, shape) -> Buffer:
        """The engine's own input buffer for this shape: stages write straight into it."""

    def run_device(self, inputs: dict[str, Buffer]) -> dict[str, Buffer]: ...

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
