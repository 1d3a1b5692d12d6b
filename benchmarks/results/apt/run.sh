#!/usr/bin/env bash
# APT with and without Monte-Carlo dropout against zero-shot, CoOp and Tip-Adapter-F, with
# calibration before and after temperature scaling (issue: APT and calibration). Split protocol,
# the same K-shot subsets and test images for every method. apt@nomc is the same trained APT
# (same seed, same weights) predicting with one deterministic pass; apt@static is the ablation
# without cross-attention. Usage: bash benchmarks/results/apt/run.sh [suite ...] (default: fine clutter)
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=benchmarks/results/apt
SHOTS=${SHOTS:-1,4,16}
SEEDS=${SEEDS:-1,2,3}
for s in ${@:-fine clutter}; do
  # CoOp on clutter's 64 classes costs more than everything else here together: its clutter numbers
  # (accuracy, ECE) are in benchmarks/results/safe/clutter, from the same splits and seeds.
  coop=coop,; [ "$s" = clutter ] && coop=
  focusshot evaluate --backbone world-clip --data "world:$s?split=1&per_class=60" --protocol split \
    --shots "$SHOTS" --seeds "$SEEDS" --quiet \
    --method zeroshot,${coop}tip_adapter_f,apt,apt@nomc,apt@static,apt@lr01 \
    --set apt@nomc.mc_samples=0 --set apt@static.cross_attention=false --set apt@lr01.lr=0.1 \
    --output "runs/apt/$s"
  if [ "$s" = clutter ]; then  # CoOp alone, same splits and seeds, for its calibration numbers
    focusshot evaluate --backbone world-clip --data "world:$s?split=1&per_class=60" --protocol split \
      --shots "$SHOTS" --seeds "$SEEDS" --quiet --no-report --method zeroshot,coop --output "runs/apt/${s}_coop"
    mkdir -p "$OUT/${s}_coop" && cp "runs/apt/${s}_coop"/{results.jsonl,summary.md,run.json} "$OUT/${s}_coop/"
  fi
  mkdir -p "$OUT/$s"
  cp "runs/apt/$s"/{results.jsonl,summary.md,summary.csv,paired.md,paired.csv,reliability.md,reliability.png,run.json,timing.json} "$OUT/$s/"
done
