#!/usr/bin/env bash
# The DA-Net continued on real-textured cases (export.realtexture) mixed with synthetic training
# cases (export.dataset), so that it learns real texture without forgetting the synthetic heads:
# trained on real-textured cases alone it called nearly every normal subcortical region of the
# synthetic studies (engines/README.md). One model folder per left-out subject for the
# leave-one-subject-out evaluation, then "all" (every development subject), the shipped one.
# About 20 minutes per folder on a 2-core CPU (cases 5, training 15); the synthetic cases are made
# once (about 8 minutes for 200).
#   bash export/train_realtex.sh [path/to/shared/data] [sub002 sub003 sub005 all]
#   (export/train_all.sh then calibrates each folder's rule with its own DA-Net, and evaluates)
#   python -m export.evaluate real --loo --fold-models 'build/realtex/models_{subject}' --no-cards
#   (kept with the shipped set by `python -m export.folds`, as engines/folds/<subject>)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/data}
shift || true
RUNS=${*:-sub002 sub003 sub005 all}
SYNTHETIC=build/data/train
SYNTHETIC_CASES=200
if [ "$(ls "$SYNTHETIC" 2>/dev/null | grep -c '^case_.*\.npz$')" -lt "$SYNTHETIC_CASES" ]; then
  python -m export.dataset --shared "$SHARED" --out "$SYNTHETIC" --seeds "0:$SYNTHETIC_CASES"
fi
for S in $RUNS; do
  if [ "$S" = all ]; then
    EXCLUDE=() CASES=300 WHICH="all three development subjects"
  else
    EXCLUDE=(--exclude "$S") CASES=200 WHICH="the development subjects other than $S"
  fi
  python -m export.realtexture --data "$SHARED/real" --shared "$SHARED" "${EXCLUDE[@]}" \
      --out "build/realtex/data_$S" --cases "$CASES"
  # One training folder: links to the real-textured cases and the first synthetic ones.
  MIX="build/realtex/mix_$S"
  rm -rf "$MIX" && mkdir -p "$MIX"
  ln -s "$PWD"/build/realtex/data_"$S"/case_*.npz "$MIX"/
  for i in $(seq 0 $((SYNTHETIC_CASES - 1))); do
    ln -s "$PWD/$SYNTHETIC/$(printf 'case_%05d.npz' "$i")" "$MIX"/
  done
  rm -rf "build/realtex/models_$S"
  cp -r engines "build/realtex/models_$S"
  # Every folder starts from the synthetic-trained DA-Net, never from a shipped real-textured one
  # (which saw every development subject).
  cp engines/pytorch/synthetic/danet_*.pt "build/realtex/models_$S/pytorch/"
  python -m export.train classify --continue --iterations 300 --lr 5e-4 --hu-offset 5 \
      --data "$MIX" --out "build/realtex/models_$S" \
      --provenance "Continued from the synthetic-trained DA-Net (earlier_phases) on $CASES real-textured cases \
(export.realtexture) mixed with $SYNTHETIC_CASES synthetic training cases (export.dataset seeds 0-$((SYNTHETIC_CASES - 1))). \
Real-textured: the native and symmetry-aligned files of $WHICH (public release simonsf/ct-aspects), \
each prepared by the runtime itself (alignment, skull strip, model grid, expert-convention atlas regions), \
with early-ischaemic lesions (2-8 HU darker, grey-white contrast lost, contiguous territories; truth by the \
paper's 10 % rule on the runtime's regions) added to their own voxels, and the experts' reads kept as \
positives. Every phase shifts each training pair's CT numbers by a random offset of up to 5 HU (--hu-offset), \
so that another scanner's calibration does not move its calls. Not for clinical use."
  python -m export.manifest "build/realtex/models_$S"
done
