#!/usr/bin/env bash
# FORT at 5 shots (issue 23), world:clutter, 5-way 5-shot, 15 queries, seed 0, 100 episodes: the
# official LoRA and SSF recipes, +fort with rollout prompts and with box prompts (the oracle).
#
#   bash benchmarks/results/dino/run_5shot.sh world-dino   # all six methods
#   bash benchmarks/results/dino/run_5shot.sh world-clip   # only ssf+fort@box: the other five are
#       stored runs of the same episodes (benchmarks/results/fort/world_clutter_5w5s for lora,
#       lora+fort and ssf+fort, diag_5w5s_box for lora+fort@box, tuning/world_clutter_5w5s for ssf)
#
# EPISODES (default 100) can be cut to fit; table.py pairs the episodes both backbones have.
# Run from the checkout root; one thread.
set -euo pipefail
bb=${1:-world-dino}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
opts=(--set ssf+fort@box.prompts=box)
if [ "$bb" = world-clip ]; then
  methods=ssf+fort@box
else
  methods=lora,lora+fort,lora+fort@box,ssf,ssf+fort,ssf+fort@box
  opts+=(--set lora+fort@box.prompts=box)
fi
focusshot evaluate --backbone "$bb" --data world:clutter --ways 5 --shots 5 --queries 15 \
  --episodes "${EPISODES:-100}" --seed 0 --quiet --no-report --method "$methods" "${opts[@]}" \
  --output "benchmarks/results/dino/${bb}_clutter_5w5s"
