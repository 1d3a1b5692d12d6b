#!/usr/bin/env bash
# FALIP on world-clip (6 blocks, 3 heads), world:clutter with train/val/test splits: zero-shot CLIP,
# FALIP with the true target box, with the automatic (rollout) box, red circle and blur prompts,
# and a sweep of alpha x biased blocks chosen on the val split, reported on the test split.
# 5-way, 10 queries, 100 episodes, seed 0 (episodes drawn within each split).
set -euo pipefail
out=benchmarks/results/falip
data="world:clutter?per_class=60&split=1"
common=(--backbone world-clip --data "$data" --ways 5 --shots 1 --queries 10 --episodes 100 --seed 0 --quiet)
focusshot evaluate "${common[@]}" --split test --method zeroshot,falip,red_circle,blur_box --output $out/test_prompts > /dev/null
focusshot evaluate "${common[@]}" --split test --method zeroshot,falip --set falip.region=auto --output $out/test_auto > /dev/null
for split in val test; do
  for a in 0.2 1 3 10; do
    for k in 2 3 6; do
      focusshot evaluate "${common[@]}" --split $split --method zeroshot,falip --set falip.alpha=$a \
        --set falip.layers=$k --output $out/${split}_a${a}_k${k} > /dev/null
    done
  done
done
