#!/usr/bin/env bash
# SAFE, SAFE-A and the CLIP baselines on FocusWorld under the split protocol (issue: SAFE).
# Same splits and seeds for every method; zero-shot first, so paired.md compares each method with it.
# safe@b0 is SAFE with beta = 0 (the tuned pool alone), safe@b1 with beta = 1; zero-shot is the
# frozen end. Every fit on world:single is also tested on world:clutter (same classes: the
# distribution shift). Usage: bash benchmarks/results/safe/run.sh [suite ...] (default: single clutter)
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=benchmarks/results/safe
SHOTS=${SHOTS:-1,4,16}
SEEDS=${SEEDS:-1,2,3}
for suite in "${@:-single clutter}"; do
  for s in $suite; do
    focusshot evaluate --backbone world-clip --data "world:$s?split=1&per_class=60" --protocol split \
      --shots "$SHOTS" --seeds "$SEEDS" --quiet \
      $( [ "$s" = single ] && echo --test-data "world:clutter?split=1&per_class=60" ) \
      --method zeroshot,logistic,lp_pp,tip_adapter,tip_adapter_f,coop,safe,safe_a,safe@b0,safe@b1 \
      --set safe@b0.beta=0 --set safe@b1.beta=1 \
      --output "runs/safe/$s"
    mkdir -p "$OUT/$s"
    cp "runs/safe/$s"/{results.jsonl,summary.md,summary.csv,paired.md,paired.csv,run.json,timing.json} "$OUT/$s/"
  done
done
