#!/usr/bin/env bash
# Everything a GPU machine can check, in one run (from the repository root, after
# `pip install -e '.[gpu,test]'`, or '.[gpu-cu12,test]' for drivers below CUDA 13):
#   1. every NVRTC kernel against its CPU function, and the whole GPU path against the CPU path;
#   2. TensorRT engines built, then parity against ONNX Runtime fp32 (skipped without TensorRT);
#   3. the GPU benchmark (TensorRT engines, else the PyTorch fp16 networks on the same stream).
# Results land in build/gpu_verify/ (or the folder given); record the figures, with the device and
# the date, in benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/gpu_verify}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.csv"
python -m pytest tests/test_gpu_kernels.py tests/test_gpu_engines.py -q -rs 2>&1 | tee "$out/tests.txt"
if python -c "import tensorrt" 2>/dev/null; then
    aspects engines build | tee "$out/engines.txt"
    aspects engines parity | tee "$out/parity.jsonl"
    python benchmarks/gpu_benchmark.py --out "$out/gpu_results.json"
else
    echo "TensorRT is not installed: engines and parity skipped; timing the PyTorch fp16 networks instead"
    python benchmarks/gpu_benchmark.py --engines torch --out "$out/gpu_results_torch.json"
fi
echo "done: $out"
