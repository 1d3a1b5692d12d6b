#!/usr/bin/env bash
# Why SAFE's blend does not beat its tuned-pool-alone end on world-clip: the same splits and seeds
# as run.sh (world:single, K = 4 and 16), SAFE trained with the blend (safe, beta 0.5; the
# issue's reading), trained alone and blended only at inference (safe@infer: the abstract's
# reading), and the tuned pool alone (safe@b0); zero-shot is the frozen end.
set -euo pipefail
cd "$(dirname "$0")/../../.."
focusshot evaluate --backbone world-clip --data "world:single?split=1&per_class=60" --protocol split \
  --shots 4,16 --seeds 1,2,3 --quiet --no-report \
  --method zeroshot,safe,safe@infer,safe@b0 \
  --set safe@infer.blend_in_training=false --set safe@b0.beta=0 \
  --output runs/safe/diagnose_single
mkdir -p benchmarks/results/safe/diagnose_single
cp runs/safe/diagnose_single/{results.jsonl,summary.md,paired.md,run.json} benchmarks/results/safe/diagnose_single/
