#!/usr/bin/env bash
# Rebuild the shipped models from scratch on a 2-core CPU (about 80 minutes, evaluation extra):
# synthetic data -> VB-Net coarse + fine -> DA-Net subcortical + cortical -> ONNX + cards -> evaluation.
# Usage: bash export/train_all.sh [path/to/shared/data]
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/data}
python -m export.dataset --shared "$SHARED" --out build/data/train --seeds 0:260
python -m export.dataset --shared "$SHARED" --out build/data/test --seeds 100000:100060
python -m export.train segment --data build/data/train --out engines
python -m export.train classify --data build/data/train --out engines
python -m export.evaluate cases --data build/data/test --models engines
python -m export.evaluate studies --shared "$SHARED" --models engines --n 24
python -m export.evaluate real --real "$SHARED/real" --models engines
