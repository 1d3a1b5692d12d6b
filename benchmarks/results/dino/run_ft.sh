#!/usr/bin/env bash
# FT at FORT's official defaults (issue 23), 5-way 1-shot on world:clutter?split=1's test split,
# 100 episodes, paired with run.sh's and run_ssf.sh's rows (seed 0, 5 queries): full fine-tuning
# of the image tower, AdamW lr 1e-5, 5 epochs, head from MetaOptNet; ft+fort adds the loss at
# fort_alpha 3e-2 (the official FT default) on every row with rollout prompts, ft+fort@box with
# the data's boxes (the oracle).
# No regime is chosen here (run.sh's ft@b2 is the regime), so there is no validation phase.
#
#   bash benchmarks/results/dino/run_ft.sh world-dino world-clip
#
# Run from the checkout root; one thread.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for bb in "$@"; do
  focusshot evaluate --backbone "$bb" --data "world:clutter?split=1" --split test \
    --method ft,ft+fort,ft+fort@box --set ft+fort@box.prompts=box \
    --ways 5 --shots 1 --queries 5 --episodes 100 --seed 0 --quiet --no-report \
    --output "benchmarks/results/dino/${bb}_test_5w1s_ft"
done
