#!/usr/bin/env bash
# FORT vs its plain recipes on FocusWorld clutter: the same 100 episodes (seed 0) per shot count.
# Run from the checkout root: bash benchmarks/results/fort/run.sh
set -euo pipefail
out=benchmarks/results/fort
for k in 1 5; do
  focusshot evaluate --backbone world-clip --data world:clutter \
    --method lora,lora+fort,ft,ft+fort,ssf,ssf+fort --shots "$k" --episodes 100 \
    --output "$out/world_clutter_5w${k}s" --quiet
done
