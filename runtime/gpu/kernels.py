"""Compile runtime/gpu/kernels.cu to a cubin with NVRTC, once per GPU architecture.

NVRTC needs no GPU, so the CPU-only CI compiles every kernel too. Compiled
cubins are cached on disk, keyed by the source, the options, the NVRTC version
and the architecture; a changed kernel gets a new key, never a stale binary.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import DeviceUnavailable
from ..regions import cuda_defines

SOURCE = Path(__file__).with_name("kernels.cu")
POINTS_PER_THREAD = 64          # mirror_sums: sample points summed by one thread
# Kernel name -> parameter types, in order: p pointer, i int32, l int64, f float32, d float64.
KERNELS = {
    "resample_slab": "piiipfipiii",
    "pool_mean": "piiiiiiiiiifpiii",
    "threshold_above": "plfp",
    "morph_diamond": "piiiiip",
    "soft_tissue": "ppplffp",
    "mask_and": "pplp",
    "fill_holes_slices": "piii",
    "ccl_init": "plp",
    "ccl_merge": "piii",
    "ccl_count": "plp",
    "ccl_largest": "pplp",
    "ccl_select": "pplp",
    "count_nonzero": "plp",
    "window_image": "ppiiiiffp",
    "argmax_classes": "pilp",
    "flip_x": "pli",
    "add_flipped_x": "ppli",
    "classes_at_least": "plip",
    "largest_size": "pplp",
    "box_reset": "p",
    "component_box": "pppdiiip",
    "compose_labels": "piiipiiiiiiiiifpiii",
    "region_sums": "piiipip",
    "crop_pairs": "ppiiipipiiip",
    "mirror_sums": "piiipppiddddp",
}
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
    """kernels.cu behind the numbers it shares with Python: the region table's label ids and classes,
    and the launch geometry. The CPU emulation in the tests compiles exactly this text too."""
    defines = cuda_defines() + f"#define POINTS_PER_THREAD {POINTS_PER_THREAD}\n"
    return defines.encode() + SOURCE.read_bytes()


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
