#!/usr/bin/env bash
# DA-Net fine-tuned on real-textured cases (export.realtexture), one model folder per left-out
# subject (leave-one-subject-out; about 15 minutes per subject on a 2-core CPU).
# Usage: bash export/train_realtex.sh [path/to/shared/data] [subjects...]
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/data}
shift || true
SUBJECTS=${*:-sub002 sub003 sub005}
for S in $SUBJECTS; do
  python -m export.realtexture --data "$SHARED/real" --shared "$SHARED" --exclude "$S" \
      --out "build/realtex/data_$S" --cases 200
  rm -rf "build/realtex/models_$S"
  cp -r engines "build/realtex/models_$S"
  python -m export.train classify --continue --iterations 300 --lr 5e-4 \
      --data "build/realtex/data_$S" --out "build/realtex/models_$S"
  python -m export.manifest "build/realtex/models_$S"
done
