#!/usr/bin/env bash
# Rebuild the shipped models from scratch on a 2-core CPU (about 4 hours, evaluation extra):
# synthetic data -> VB-Net coarse + fine -> DA-Net subcortical + cortical -> ONNX + cards -> region atlas
# -> DA-Net on real texture -> density rule calibration -> evaluation.
# Later phases continue from the previous phase's weights in engines/pytorch (each card lists its phases).
# Usage: bash export/train_all.sh [path/to/shared/data]
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/data}
python -m export.dataset --shared "$SHARED" --out build/data/train --seeds 0:260
python -m export.dataset --shared "$SHARED" --out build/data/test --seeds 100000:100060
# phase 1 (about 55 minutes). Every DA-Net phase shifts each training pair's CT numbers by up to 5 HU
# (--hu-offset): without it the DA-Net learnt absolute HU and another scanner's calibration moved its calls.
python -m export.train segment --data build/data/train --out engines
python -m export.train classify --hu-offset 5 --data build/data/train --out engines
# phase 2: the fine VB-Net was still improving (about 45 minutes), DA-Net a little further (10 minutes)
python -m export.train segment --continue --stages fine --iterations 1500 --lr 2e-3 --data build/data/train --out engines
python -m export.train classify --continue --iterations 300 --lr 5e-4 --hu-offset 5 --data build/data/train --out engines
# phase 3: the fine VB-Net at a lower rate (about 30 minutes)
python -m export.train segment --continue --stages fine --iterations 1000 --lr 1e-3 --data build/data/train --out engines
# the region atlas from the expert maps (about 1 minute); the real-texture phase prepares its cases with it
python -m export.atlas --shared "$SHARED" --out engines
# phase 4: the DA-Net continued on real-textured cases mixed with synthetic ones: one folder per
# left-out development subject (its leave-one-out figures), then "all", which is shipped (about 80 minutes);
# each starts from the synthetic-phase weights, kept in engines/pytorch/synthetic/
mkdir -p engines/pytorch/synthetic
cp engines/pytorch/danet_*.pt engines/pytorch/synthetic/
bash export/train_realtex.sh "$SHARED" sub002 sub003 sub005 all
cp build/realtex/models_all/danet_* build/realtex/models_all/training_log.jsonl engines/
cp build/realtex/models_all/pytorch/danet_* engines/pytorch/
python -m export.manifest engines
# the measure's sulcus filter (40 synthetic scanner-pose studies and their elderly twins, about 40 minutes),
# then the rule's four values on the young 40 (60 more only check them, about 15 minutes), then every evaluation
python -m export.evaluate calibrate --shared "$SHARED" --models engines --n 40 --check 60 --troughs
# each leave-one-out folder's rule: the shipped measure, its values calibrated the same way with the
# folder's own DA-Net, on copies of the same kept studies re-classified by that DA-Net (a few minutes each)
for S in sub002 sub003 sub005; do
  cp engines/density_rule.json "build/realtex/models_$S/"
  python -m export.manifest "build/realtex/models_$S"
  mkdir -p "build/eval/calibrate_$S/studies" && cp build/eval/calibrate/studies/*.npz "build/eval/calibrate_$S/studies/"
  python -m export.evaluate calibrate --shared "$SHARED" --models "build/realtex/models_$S" --n 40 \
      --out "build/eval/calibrate_$S"
done
python -m export.evaluate cases --data build/data/test --models engines
python -m export.evaluate studies --shared "$SHARED" --models engines --n 24
python -m export.evaluate real --data "$SHARED/real" --models engines --loo --fold-models 'build/realtex/models_{subject}'
python -m export.evaluate stability --loo --fold-models 'build/realtex/models_{subject}'
# keep the folds with the shipped set (their DA-Nets and rules; tests/test_folds.py checks their real rows)
rm -rf engines/folds
for S in sub002 sub003 sub005; do python -m export.folds "build/realtex/models_$S" "engines/folds/$S"; done
