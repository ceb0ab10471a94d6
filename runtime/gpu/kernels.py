"""Compile runtime/gpu/kernels.cu to a cubin with NVRTC, once per GPU architecture.

NVRTC needs no GPU, so the CPU-only CI compiles every kernel too. Compiled
cubins are cached on disk, keyed by the source, the options, the NVRTC version
and the architecture; a changed kernel gets a new key, never a stale binary.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..errors import DeviceUnavailable
from ..regions import cuda_defines

SOURCE = Path(__file__).with_name("kernels.cu")
_SCALAR_CODES = {"int": "i", "i64": "l", "float": "f", "double": "d"}


def _signatures() -> dict[str, tuple[tuple[str, str], ...]]:
    """Kernel name -> ((parameter name, type code), ...), read from kernels.cu itself, so the launch
    side can never drift from the source. Codes: p pointer, i int32, l int64, f float32, d float64."""
    out = {}
    text = SOURCE.read_text()
    for name, params in re.findall(r'extern "C" __global__ void (\w+)\(([^)]*)\)', text):
        parsed = []
        for param in " ".join(params.split()).split(","):
            words = param.replace("*", " * ").split()
            pname, ptype = words[-1], "p" if "*" in words else _SCALAR_CODES[words[-2]]
            parsed.append((pname, ptype))
        out[name] = tuple(parsed)
    return out


KERNELS = _signatures()
# No fused multiply-add: the preprocessing must round as the CPU path does, and it is memory bound anyway.
OPTIONS = ("--fmad=false", "--std=c++17")


def cache_dir() -> Path:
    root = os.environ.get("ASPECTS_CACHE") or Path.home() / ".cache" / "aspects-rt"
    return Path(root) / "kernels"


def nvrtc_version() -> tuple[int, int]:
    nvrtc = _nvrtc()
    _, major, minor = nvrtc.nvrtcVersion()
    return int(major), int(minor)


def source() -> bytes:
    """kernels.cu behind the numbers it shares with Python: the region table's label ids and classes.
    The CPU emulation in the tests compiles exactly this text too."""
    return cuda_defines().encode() + SOURCE.read_bytes()


def compile_cubin(arch: str, use_cache: bool = True) -> bytes:
    """`arch` as 'sm_90'. Returns the cubin; raises DeviceUnavailable with NVRTC's log on failure."""
    nvrtc = _nvrtc()
    source_text = source()
    options = (f"--gpu-architecture={arch}", *OPTIONS)
    key = hashlib.sha256(source_text + repr((options, nvrtc_version())).encode()).hexdigest()[:24]
    cached = cache_dir() / f"{arch}-{key}.cubin"
    if use_cache and cached.exists():
        return cached.read_bytes()
    err, prog = nvrtc.nvrtcCreateProgram(source_text, SOURCE.name.encode(), 0, [], [])
    _check(nvrtc, err, "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in options]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise DeviceUnavailable(f"NVRTC could not compile {SOURCE.name} for {arch}:\n{_log(nvrtc, prog)}")
        err, size = nvrtc.nvrtcGetCUBINSize(prog)
        _check(nvrtc, err, "nvrtcGetCUBINSize")
        cubin = b" " * size
        (err,) = nvrtc.nvrtcGetCUBIN(prog, cubin)
        _check(nvrtc, err, "nvrtcGetCUBIN")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(cubin)
        tmp.replace(cached)            # atomic: a concurrent scorer never reads half a file
    return cubin


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        raise DeviceUnavailable("the GPU path needs cuda-python (pip install 'aspects-rt[gpu]')") from None
    try:
        nvrtc.nvrtcVersion()
    except Exception as exc:  # the bindings load libnvrtc lazily and raise their own error types
        raise DeviceUnavailable(f"NVRTC library not found ({exc}); pip install 'aspects-rt[gpu]'") from None
    return nvrtc


def _log(nvrtc, prog) -> str:
    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, log)
    return log.decode(errors="replace").rstrip("\x00")


def _check(nvrtc, err, what: str) -> None:
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise DeviceUnavailable(f"{what} failed: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")
