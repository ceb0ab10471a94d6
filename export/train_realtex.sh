#!/usr/bin/env bash
# The DA-Net continued on real-textured cases (export.realtexture): one model folder per left-out
# subject for the leave-one-subject-out evaluation, then "all" (every development subject), the
# shipped candidate. About 20 minutes per folder on a 2-core CPU (cases 5, training 15).
#   bash export/train_realtex.sh [path/to/shared/data] [sub002 sub003 sub005 all]
#   python -m export.evaluate real --loo --fold-models 'build/realtex/models_{subject}' --no-cards
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/data}
shift || true
RUNS=${*:-sub002 sub003 sub005 all}
for S in $RUNS; do
  if [ "$S" = all ]; then
    EXCLUDE=() CASES=300 WHICH="all three development subjects"
  else
    EXCLUDE=(--exclude "$S") CASES=200 WHICH="the development subjects other than $S"
  fi
  python -m export.realtexture --data "$SHARED/real" --shared "$SHARED" "${EXCLUDE[@]}" \
      --out "build/realtex/data_$S" --cases "$CASES"
  rm -rf "build/realtex/models_$S"
  cp -r engines "build/realtex/models_$S"
  python -m export.train classify --continue --iterations 300 --lr 5e-4 \
      --data "build/realtex/data_$S" --out "build/realtex/models_$S" \
      --provenance "Continued from the synthetic-trained DA-Net (earlier_phases) on $CASES real-textured cases \
(export.realtexture): the native and symmetry-aligned files of $WHICH (public release simonsf/ct-aspects), \
each prepared by the runtime itself (alignment, skull strip, model grid, expert-convention atlas regions), \
with early-ischaemic lesions (2-8 HU darker, grey-white contrast lost, contiguous territories; truth by the \
paper's 10 % rule on the runtime's regions) added to their own voxels, and the experts' reads kept as \
positives. Not for clinical use."
  python -m export.manifest "build/realtex/models_$S"
done
