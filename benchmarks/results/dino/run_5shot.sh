#!/usr/bin/env bash
# world-dino at 5 shots, paired with the stored world-clip FORT runs on the same episodes
# (world:clutter, 5-way 5-shot, 15 queries, seed 0: benchmarks/results/fort/world_clutter_5w5s for
# lora and lora+fort, diag_5w5s_box for box prompts). EPISODES (default 100) can be cut to fit;
# the pairing takes the episodes both have. Run from the checkout root.
set -euo pipefail
focusshot evaluate --backbone world-dino --data world:clutter --ways 5 --shots 5 --queries 15 \
  --episodes "${EPISODES:-100}" --seed 0 --quiet --no-report \
  --method lora,lora+fort,lora+fort@box --set lora+fort@box.prompts=box \
  --output benchmarks/results/dino/world-dino_clutter_5w5s
