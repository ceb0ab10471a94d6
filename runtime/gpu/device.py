"""The CUDA host side, on cuda-python's driver bindings (`cuda.bindings.driver`).

One `CudaDevice` owns the primary context, one stream, the compiled kernel
module and a pinned staging buffer. Everything a study needs is enqueued on
that one stream; the host waits only where it must read a result. The stages
(preprocess, segment, patches, align) talk to a device through the small
interface below, so the tests can run the very same stage code on a CPU
emulation of the kernels.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from ..errors import DeviceError, DeviceUnavailable
from . import kernels

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65_535
SMALL_WRITE_BYTES = 64 * 1024
_ARG_TYPES = {"p": ctypes.c_void_p, "i": ctypes.c_int32, "l": ctypes.c_int64, "f": ctypes.c_float,
              "d": ctypes.c_double}


@dataclass(frozen=True)
class Buffer:
    """A device array: address, shape and dtype. `host` is set only on the CPU emulation."""
    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    host: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def kernel_args(name: str, args: dict) -> list:
    """Keyword arguments named as in kernels.cu -> ctypes values in the kernel's parameter order."""
    sig = kernels.KERNELS[name]
    names = [n for n, _ in sig]
    if set(args) != set(names):
        raise TypeError(f"{name}({', '.join(names)}): missing {sorted(set(names) - set(args))}, "
                        f"unknown {sorted(set(args) - set(names))}")
    out = []
    for pname, code in sig:
        a = args[pname]
        if code == "p":
            a = a.ptr if isinstance(a, Buffer) else int(a)
        out.append(_ARG_TYPES[code](a))
    return out


def grid_for(work_items: int) -> int:
    return max(1, min(MAX_BLOCKS, -(-int(work_items) // THREADS_PER_BLOCK)))


class CudaDevice:
    """One GPU, one stream. Raises DeviceUnavailable with the reason when it cannot start."""

    def __init__(self, ordinal: int = 0):
        try:
            from cuda.bindings import driver
        except ImportError:
            raise DeviceUnavailable("the GPU path needs cuda-python (pip install 'aspects-rt[gpu]')") from None
        self.cu = driver
        try:
            self.check(driver.cuInit(0), "cuInit")
        except Exception as exc:  # a missing libcuda raises the bindings' own loader error
            raise DeviceUnavailable(f"no usable NVIDIA GPU or driver ({exc})") from None
        err, count = driver.cuDeviceGetCount()
        if err != driver.CUresult.CUDA_SUCCESS or count <= ordinal:
            raise DeviceUnavailable(f"no NVIDIA GPU number {ordinal} (found {count if not err else 0})")
        self.device = self.check(driver.cuDeviceGet(ordinal), "cuDeviceGet")
        # The primary context is the one TensorRT and any runtime-API user in this process share.
        self.context = self.check(driver.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        self.check(driver.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
        self.name = self.check(driver.cuDeviceGetName(256, self.device), "cuDeviceGetName").split(b"\0")[0].decode()
        attr = driver.CUdevice_attribute
        major, minor = (attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                        attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        self.compute_capability = (self.check(driver.cuDeviceGetAttribute(major, self.device), "cc"),
                                   self.check(driver.cuDeviceGetAttribute(minor, self.device), "cc"))
        self.stream = self.check(driver.cuStreamCreate(driver.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate")
        self.stream_handle = int(self.stream)
        cubin = kernels.compile_cubin("sm_{}{}".format(*self.compute_capability))
        self.module = self.check(driver.cuModuleLoadData(cubin), "cuModuleLoadData")
        self.functions = {name: self.check(driver.cuModuleGetFunction(self.module, name.encode()), name)
                          for name in kernels.KERNELS}
        self._pinned_ptr, self._pinned_size = 0, 0
        self._owned: list[int] = []
        self._small_pinned: list[int] = []
        self._events: list = []
        self._started = True         # from here on a failed call is a device error, not "unavailable"

    # ---------------------------------------------------------------- memory

    def empty(self, shape, dtype, persistent: bool = False) -> Buffer:
        """Stream-ordered allocation, freed by `release()` at the end of the study; `persistent`
        buffers (engine inputs and outputs, reused by CUDA graphs) live as long as the device."""
        shape = tuple(int(s) for s in shape)
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        if persistent:
            ptr = int(self.check(self.cu.cuMemAlloc(nbytes), "cuMemAlloc"))
        else:
            ptr = int(self.check(self.cu.cuMemAllocAsync(nbytes, self.stream), "cuMemAllocAsync"))
            self._owned.append(ptr)
        return Buffer(ptr, shape, np.dtype(dtype))

    def put(self, array: np.ndarray) -> Buffer:
        """Host -> device through the pinned staging buffer, asynchronously on the stream."""
        array = np.ascontiguousarray(array)
        buf = self.empty(array.shape, array.dtype)
        self.write(buf, array)
        return buf

    def write(self, buf: Buffer, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=buf.dtype)
        if array.nbytes <= SMALL_WRITE_BYTES:
            # Parameters (matrices, planes, region lists): a pinned block of their own, so the copy
            # stays asynchronous; the blocks are freed with the study's buffers.
            src = int(self.check(self.cu.cuMemHostAlloc(max(1, array.nbytes), 0), "cuMemHostAlloc"))
            self._small_pinned.append(src)
        else:
            self._stage(array.nbytes)
            self.synchronize()              # the staging buffer may still feed an earlier copy
            src = self._pinned_ptr
        ctypes.memmove(src, array.ctypes.data, array.nbytes)
        self.check(self.cu.cuMemcpyHtoDAsync(buf.ptr, src, array.nbytes, self.stream), "cuMemcpyHtoDAsync")

    def get(self, buf: Buffer) -> np.ndarray:
        """Device -> host; waits for the stream."""
        self._stage(buf.nbytes)
        self.check(self.cu.cuMemcpyDtoHAsync(self._pinned_ptr, buf.ptr, buf.nbytes, self.stream), "cuMemcpyDtoHAsync")
        self.synchronize()
        out = np.empty(buf.shape, buf.dtype)
        ctypes.memmove(out.ctypes.data, self._pinned_ptr, buf.nbytes)
        return out

    def fill(self, buf: Buffer, byte: int = 0) -> None:
        self.check(self.cu.cuMemsetD8Async(buf.ptr, byte, buf.nbytes, self.stream), "cuMemsetD8Async")

    def copy(self, dst: Buffer, src: Buffer) -> None:
        self.check(self.cu.cuMemcpyDtoDAsync(dst.ptr, src.ptr, src.nbytes, self.stream), "cuMemcpyDtoDAsync")

    def release(self) -> None:
        """Free the study's buffers (stream-ordered) and its parameter blocks (after the stream drains)."""
        for ptr in self._owned:
            self.check(self.cu.cuMemFreeAsync(ptr, self.stream), "cuMemFreeAsync")
        self._owned.clear()
        self.synchronize()
        for ptr in self._small_pinned:
            self.check(self.cu.cuMemFreeHost(ptr), "cuMemFreeHost")
        self._small_pinned.clear()
        for ev in self._events:
            self.check(self.cu.cuEventDestroy(ev), "cuEventDestroy")
        self._events.clear()

    def _stage(self, nbytes: int) -> None:
        if nbytes <= self._pinned_size:
            return
        if self._pinned_ptr:
            self.synchronize()
            self.check(self.cu.cuMemFreeHost(self._pinned_ptr), "cuMemFreeHost")
        self._pinned_ptr = int(self.check(self.cu.cuMemHostAlloc(nbytes, 0), "cuMemHostAlloc"))
        self._pinned_size = nbytes

    # ---------------------------------------------------------------- execution

    def launch(self, name: str, work_items: int, **args) -> None:
        """Grid-stride kernel over `work_items`; arguments by their kernels.cu names."""
        self._launch(name, grid_for(work_items), THREADS_PER_BLOCK, args)

    def launch_blocks(self, name: str, blocks: int, **args) -> None:
        """One block per item (per-slice kernels)."""
        self._launch(name, max(1, min(MAX_BLOCKS, int(blocks))), THREADS_PER_BLOCK, args)

    def _launch(self, name: str, grid: int, block: int, args: dict) -> None:
        values = kernel_args(name, args)
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        self.check(self.cu.cuLaunchKernel(self.functions[name], grid, 1, 1, block, 1, 1, 0, self.stream,
                                           ctypes.addressof(params), 0), f"launch {name}")

    def synchronize(self) -> None:
        self.check(self.cu.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    def event(self):
        """A timing event recorded on the stream now (see `elapsed_ms`); destroyed by `release()`."""
        ev = self.check(self.cu.cuEventCreate(self.cu.CUevent_flags.CU_EVENT_DEFAULT), "cuEventCreate")
        self.check(self.cu.cuEventRecord(ev, self.stream), "cuEventRecord")
        self._events.append(ev)
        return ev

    def elapsed_ms(self, start, end) -> float:
        self.check(self.cu.cuEventSynchronize(end), "cuEventSynchronize")
        return float(self.check(self.cu.cuEventElapsedTime(start, end), "cuEventElapsedTime"))

    def memory_used(self) -> tuple[int, int]:
        free, total = self.check(self.cu.cuMemGetInfo(), "cuMemGetInfo")
        return int(total - free), int(total)

    def check(self, result, what: str):
        """The value(s) of a cuda.bindings call. A failure while starting is DeviceUnavailable; once
        the device is up, DeviceError."""
        err, *value = result if isinstance(result, tuple) else (result,)
        if err != self.cu.CUresult.CUDA_SUCCESS:
            _, msg = self.cu.cuGetErrorString(err)
            error = DeviceError if getattr(self, "_started", False) else DeviceUnavailable
            raise error(f"CUDA {what} failed: {msg.decode() if msg else err}")
        return value[0] if len(value) == 1 else (tuple(value) if value else None)
