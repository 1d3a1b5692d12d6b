#!/usr/bin/env bash
# FORT vs its plain recipes on FocusWorld clutter: the same 100 episodes (seed 0) per shot count.
# 1-shot: all six methods in one run. 5-shot: lora (a check that the stored baseline reproduces)
# and the three FORT recipes; ft and ssf at 5 shots are the stored runs of the same 100 episodes in
# benchmarks/results/tuning/world_clutter_5w5s (identical per episode at 1 shot: checked), paired
# with benchmarks/pair_runs.py.
# Run from the checkout root: bash benchmarks/results/fort/run.sh
set -euo pipefail
out=benchmarks/results/fort
common=(evaluate --backbone world-clip --data world:clutter --episodes 100 --quiet)
if [ "${SHOTS:-1 5}" != "5" ]; then
  focusshot "${common[@]}" --method lora,lora+fort,ft,ft+fort,ssf,ssf+fort --shots 1 \
    --output "$out/world_clutter_5w1s"
fi
focusshot "${common[@]}" --method lora,lora+fort,ft+fort,ssf+fort --shots 5 --output "$out/world_clutter_5w5s"
python benchmarks/pair_runs.py benchmarks/results/tuning/world_clutter_5w5s "$out/world_clutter_5w5s" \
  --baseline lora --output "$out/world_clutter_5w5s/paired_with_tuning_run.md"
