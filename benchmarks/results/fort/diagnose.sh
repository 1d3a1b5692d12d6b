#!/usr/bin/env bash
# Why FORT does (not) help on world-clip: oracle box prompts and a stronger attention loss, LoRA,
# on the same 100 episodes as run.sh (seed 0); paired against run.sh's lora with pair_runs.py.
# Run from the checkout root after run.sh: bash benchmarks/results/fort/diagnose.sh
set -euo pipefail
out=benchmarks/results/fort
for k in ${SHOTS:-1 5}; do
  base=(evaluate --backbone world-clip --data world:clutter --method lora+fort --shots "$k" --episodes 100 --quiet)
  focusshot "${base[@]}" --set lora+fort.prompts=box --output "$out/diag_5w${k}s_box"
  focusshot "${base[@]}" --set lora+fort.fort_alpha=5 --output "$out/diag_5w${k}s_alpha5"
  focusshot "${base[@]}" --set lora+fort.prompts=box --set lora+fort.fort_alpha=5 --output "$out/diag_5w${k}s_box_alpha5"
  for d in box alpha5 box_alpha5; do
    python benchmarks/pair_runs.py "$out/world_clutter_5w${k}s" "$out/diag_5w${k}s_$d" --baseline lora \
      --output "$out/diag_5w${k}s_$d/paired_vs_lora.md"
  done
done
