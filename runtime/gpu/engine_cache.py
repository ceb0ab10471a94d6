"""The one TensorRT engine cache: build, key, verify.

An engine is only valid for the ONNX file, TensorRT version and GPU it was
built for, so its file name carries a key over exactly those (ONNX sha256,
TensorRT version, GPU name, compute capability, optimisation profile). A
sidecar JSON records the plan's own sha256: a plan is an executable, so it is
hash-checked before every load, and a mismatch or a stale key means rebuild.

    aspects engines build        # all four, for the local GPU
    aspects engines parity       # each engine against ONNX Runtime fp32
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeviceUnavailable, ModelError
from ..modelcard import ModelCard, file_sha256

log = logging.getLogger("aspects.engines")

WORKSPACE_BYTES = 2 << 30
SLICES_PROFILE = (28, 128)          # (opt, max) slices for the VB-Nets; min is the card's z multiple
BATCH_MAX = 32                      # classifier batch profile: min 1, opt = the card's region count


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: tuple[int, int]
    profile: tuple[tuple[str, tuple, tuple, tuple], ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True, default=list).encode()).hexdigest()[:16]


def cache_dir(model_dir: Path) -> Path:
    return Path(os.environ.get("ASPECTS_ENGINE_CACHE") or model_dir / "tensorrt")


def profile_for(card: ModelCard) -> tuple[tuple[str, tuple, tuple, tuple], ...]:
    """(name, min, opt, max) shapes for every input: slices vary for the VB-Nets, batch for DA-Net."""
    out = []
    for spec in card.inputs:
        dims = []
        for d in spec.shape:
            if isinstance(d, int):
                dims.append((d, d, d))
            elif d == "slices":
                m = card.z_multiple
                dims.append((m, SLICES_PROFILE[0] + (-SLICES_PROFILE[0]) % m, SLICES_PROFILE[1]))
            elif d == "batch":
                dims.append((1, max(1, len(card.regions)), BATCH_MAX))
            else:
                raise ModelError(f"{card.name}: no profile rule for dynamic axis {d!r}")
        lo, opt, hi = (tuple(v[i] for v in dims) for i in range(3))
        out.append((spec.name, lo, opt, hi))
    return tuple(out)


def engine_key(card: ModelCard, gpu: str, cc: tuple[int, int]) -> EngineKey:
    import tensorrt as trt
    if card.sha256_fp16 is None:
        raise ModelError(f"{card.name}: the card lists no fp16 ONNX graph to build a TensorRT engine from")
    return EngineKey(card.sha256_fp16, trt.__version__, gpu, (int(cc[0]), int(cc[1])), profile_for(card))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def plan_path(card: ModelCard, key: EngineKey, model_dir: Path) -> Path:
    return cache_dir(model_dir) / f"{card.onnx.stem}.{_slug(key.gpu)}.{key.digest}.plan"


def load_plan(card: ModelCard, key: EngineKey, model_dir: Path) -> bytes | None:
    """The cached plan if present, for this key, and intact; None means build it."""
    path = plan_path(card, key, model_dir)
    meta_path = path.with_suffix(".json")
    if not path.exists() or not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    data = path.read_bytes()
    if meta.get("key") != key.digest or meta.get("plan_sha256") != hashlib.sha256(data).hexdigest():
        log.warning("engine cache: %s does not match its record; rebuilding", path.name)
        return None
    return data


def build_plan(card: ModelCard, key: EngineKey, model_dir: Path) -> bytes:
    """Strongly typed build from the card's fp16 ONNX graph (fp16 inside, fp32 I/O), with a timing
    cache per TensorRT version and GPU, then written to the cache with its sha256."""
    import tensorrt as trt

    onnx_path = card.onnx_fp16
    if onnx_path is None or file_sha256(onnx_path) != card.sha256_fp16:
        raise ModelError(f"{card.name}: fp16 ONNX file missing or its sha256 differs from the card")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 needs the flag; 11 is always strongly typed and ignores it.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"{card.name}: TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    for name, lo, opt, hi in key.profile:
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    timing_path = cache_dir(model_dir) / f"timing.{_slug(key.tensorrt)}.{_slug(key.gpu)}.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"{card.name}: TensorRT failed to build an engine (see the log above)")
    data = bytes(plan)
    path = plan_path(card, key, model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
    _atomic_write(path, data)
    _atomic_write(path.with_suffix(".json"), (json.dumps({
        "key": key.digest, "plan_sha256": hashlib.sha256(data).hexdigest(), "model": card.name,
        "model_version": card.version, "onnx": onnx_path.name, "onnx_sha256": key.onnx_sha256,
        "tensorrt": key.tensorrt, "gpu": key.gpu, "compute_capability": list(key.compute_capability),
        "profile": [list(p) for p in key.profile], "build_seconds": round(time.perf_counter() - t0, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n").encode())
    return data


def get_plan(card: ModelCard, gpu: str, cc: tuple[int, int], model_dir: Path, rebuild: bool = False) -> bytes:
    """Cached plan, or a fresh build when there is none, it is stale, or it fails its hash check."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise DeviceUnavailable("the GPU path needs TensorRT (pip install 'aspects-rt[gpu]' where NVIDIA's "
                                "TensorRT wheels are reachable)") from None
    key = engine_key(card, gpu, cc)
    data = None if rebuild else load_plan(card, key, model_dir)
    if data is None:
        log.info("building TensorRT engine for %s on %s (once per GPU and TensorRT version)", card.name, gpu)
        data = build_plan(card, key, model_dir)
    return data


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
