"""GPU benchmark: one command, one JSON file.

    python benchmarks/gpu_benchmark.py --out benchmarks/gpu_results.json

On the bundled 512x512x32 study and a 512x512x216 thin-slice study made from
it: per-stage device time (CUDA events) and the wall clock from file to report,
medians over many runs after warm-up; the GPU preprocessing checked against the
CPU result; throughput with several studies in flight (one stream each); the
CPU path on the same machine for the speed-up. The networks run as TensorRT
engines where TensorRT is installed, otherwise as the export package's PyTorch
models in fp16 on the same stream (the reference; recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from studies import make_thin_study  # benchmarks/ is the script's folder

from runtime.cpu import CpuScorer
from runtime.errors import AspectsError
from runtime.modelcard import DEFAULT_MODEL_DIR
from runtime.shipped import DEFAULT_STUDY

ROOT = Path(__file__).resolve().parent.parent

class TorchEngine:
    """Reference engine: the export package's PyTorch network in fp16 on the device's stream,
    reading and writing torch tensors whose memory the kernels address directly."""

    def __init__(self, card, device, checkpoint: Path):
        import torch

        from export.networks import DANet, DANetConfig, VBNet, VBNetConfig
        self.torch, self.card, self.device = torch, card, device
        ck = torch.load(checkpoint, map_location="cuda", weights_only=True)
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in ck["config"].items()}
        net = VBNet(VBNetConfig(**cfg)) if card.role.startswith("segment") else DANet(DANetConfig(**cfg))
        net.load_state_dict(ck["state_dict"])
        self.net = net.cuda().eval().half()
        self.stream = torch.cuda.ExternalStream(device.stream_handle)
        self._io: dict[tuple, object] = {}

    def input_buffer(self, shape):
        from runtime.gpu.device import Buffer
        shape = tuple(int(s) for s in shape)
        if shape not in self._io:
            self._io[shape] = self.torch.empty(shape, dtype=self.torch.float32, device="cuda")
        t = self._io[shape]
        return Buffer(t.data_ptr(), shape, np.dtype(np.float32))

    def run_device(self, inputs):
        from runtime.gpu.device import Buffer
        name = self.card.inputs[0].name
        x = self._io[tuple(inputs[name].shape)]
        with self.torch.cuda.stream(self.stream), self.torch.no_grad():
            out = self.net(x.half())
            out = out if isinstance(out, tuple) else (out,)
            out = [o.float().contiguous() for o in out]
        self._keep = out
        return {spec.name: Buffer(o.data_ptr(), tuple(o.shape), np.dtype(np.float32))
                for spec, o in zip(self.card.outputs, out)}


def make_gpu_scorer(kind: str):
    from runtime.gpu.device import CudaDevice
    from runtime.gpu.pipeline import GpuScorer
    from runtime.modelcard import load_model_set
    if kind == "tensorrt":
        return GpuScorer()
    device = CudaDevice()
    models = load_model_set(DEFAULT_MODEL_DIR)
    engines = {c.role: TorchEngine(c, device, DEFAULT_MODEL_DIR / "pytorch" / f"{c.onnx.stem}.pt")
               for c in models.cards}
    return GpuScorer(gpu=device, engines=engines)


def time_study(scorer, path: Path, runs: int, warmup: int) -> dict:
    from runtime.report import write_report
    stages: dict[str, list[float]] = {}
    wall = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            result = scorer.score(path)
            write_report(result, Path(tmp) / f"r{i}")
            t1 = time.perf_counter()
            if i < warmup:
                continue
            wall.append(t1 - t0)
            for k, v in result.timings:
                stages.setdefault(k, []).append(v)
    return {"runs": runs, "aspects": result.score.aspects,
            "wall_read_to_report_s": {"median": statistics.median(wall), "p90": float(np.percentile(wall, 90))},
            "stages_s_median": {k: statistics.median(v) for k, v in stages.items()}}


def preprocessing_check(scorer, path: Path) -> dict:
    """GPU resample + strip + window against the CPU functions on the same alignment."""
    from runtime.align import align
    from runtime.gpu.preprocess import preprocess_on_device
    from runtime.preprocess import preprocess_grid
    from runtime.read import read_study
    from runtime.resample import model_grid, resample
    dev = scorer.gpu
    study = read_study(path)
    alignment = align(study)
    grid = model_grid(study, alignment, scorer.models.grid)
    img = preprocess_on_device(dev, dev.put(study.hu), study, alignment, grid, scorer.models.window)
    hu, brain = dev.get(img.hu), dev.get(img.brain).astype(bool).repeat(img.factor, 1).repeat(img.factor, 2)
    image = dev.get(img.image)
    dev.release()
    cpu = preprocess_grid(resample(study, alignment, grid), grid, scorer.models.window)
    return {"hu_max_abs_diff": float(np.abs(hu - cpu.hu).max()),
            "brain_mask_mismatched_voxels": int((brain != cpu.brain).sum()), "brain_voxels": int(cpu.brain.sum()),
            "image_max_abs_diff": float(np.abs(image - cpu.image).max())}


def throughput(kind: str, path: Path, in_flight: int, per_worker: int) -> dict:
    scorers = [make_gpu_scorer(kind) for _ in range(in_flight)]
    for s in scorers:
        s.score(path)
    errors = []

    def work(s):
        try:
            for _ in range(per_worker):
                s.score(path)
        except Exception as exc:  # report, don't hang the benchmark
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(s,)) for s in scorers]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    return {"in_flight": in_flight, "studies": in_flight * per_worker, "seconds": seconds,
            "studies_per_second": in_flight * per_worker / seconds, "errors": errors}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_results.json")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cpu-runs", type=int, default=3)
    p.add_argument("--in-flight", type=int, default=4)
    p.add_argument("--engines", choices=("auto", "tensorrt", "torch"), default="auto")
    args = p.parse_args(argv)
    try:
        kind = args.engines
        if kind == "auto":
            try:
                import tensorrt  # noqa: F401
                kind = "tensorrt"
            except ImportError:
                kind = "torch"
        scorer = make_gpu_scorer(kind)
    except AspectsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    dev = scorer.gpu
    report = {"date": time.strftime("%Y-%m-%d"), "device": dev.name, "compute_capability": list(dev.compute_capability),
              "engines": kind, "studies": {}}
    with tempfile.TemporaryDirectory() as tmp:
        studies = {"bundled_512x512x32": DEFAULT_STUDY, "thin_512x512x216": make_thin_study(Path(tmp) / "thin.nii.gz")}
        cpu = CpuScorer()
        for name, path in studies.items():
            entry = {"gpu": time_study(scorer, path, args.runs, args.warmup),
                     "preprocessing_vs_cpu": preprocessing_check(scorer, path),
                     "cpu": time_study(cpu, path, args.cpu_runs, 1)}
            entry["speedup_wall"] = (entry["cpu"]["wall_read_to_report_s"]["median"]
                                     / entry["gpu"]["wall_read_to_report_s"]["median"])
            report["studies"][name] = entry
            print(name, json.dumps(entry["gpu"]["wall_read_to_report_s"]), flush=True)
        report["throughput"] = throughput(kind, studies["bundled_512x512x32"], args.in_flight, 10)
    report["gpu_memory_used_bytes"] = dev.memory_used()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
