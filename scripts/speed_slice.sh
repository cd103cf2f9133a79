#!/usr/bin/env bash
# Issue 35's fixed slice of the offline benchmark, to time the harness before and after a
# change (docs/PERFORMANCE.md): 12 polarity final runs (full x3, lora x3, adapter x1, prefix
# x3 at their published lr scales; seeds 0, 1, 2), two at a time, one thread each, each in
# its own process. Run it on an otherwise idle machine, once per checkout to compare:
#
#   scripts/speed_slice.sh CHECKOUT OUT      e.g. scripts/speed_slice.sh ../old /tmp/slice-old
#
# prints the slice's wall time; the records land in OUT/records.
set -euo pipefail
CODE=$(cd "${1:?usage: scripts/speed_slice.sh CHECKOUT OUT}" && pwd)
OUT=$(mkdir -p "${2:?usage: scripts/speed_slice.sh CHECKOUT OUT}" && cd "$2" && pwd)
PYTHON=${PYTHON:-python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
cd "$CODE"
start=$(date +%s)
for seed in 0 1 2; do
  for cell in full:3 lora:3 adapter:1 prefix:3; do
    echo "method=${cell%%:*} method.lr_scale=${cell##*:} seed=$seed"
  done
done | xargs -P2 -L1 "$PYTHON" -m peftbench run -m +experiment=offline-benchmark task=polarity \
  train.evaluate_test=true train.threads=1 tracker=none "results_dir=$OUT" >"$OUT/slice.log" 2>&1
echo "slice: $(($(date +%s) - start)) s wall; records in $OUT/records"
