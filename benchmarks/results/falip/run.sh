#!/usr/bin/env bash
# FALIP on world-clip (6 blocks, 3 heads), world:clutter with train/val/test splits, 5-way 1-shot,
# 10 queries, 100 episodes, seed 0 (episodes drawn within each split; zero-shot methods ignore the
# support set). 1) zero-shot CLIP, FALIP at the official alpha 0.2 / last 4 blocks, red circle and
# blur prompts, and the automatic region, on test; 2) alpha x biased blocks swept on val
# (sweep_table.py picks the best); 3) the chosen setting on test, with the true and the automatic box.
set -euo pipefail
out=benchmarks/results/falip
common=(--backbone world-clip --data "world:clutter?per_class=60&split=1" --ways 5 --shots 1 --queries 10
        --episodes 100 --seed 0 --quiet)
focusshot evaluate "${common[@]}" --split test --method zeroshot,falip,red_circle,blur_box --output $out/test_prompts > /dev/null
focusshot evaluate "${common[@]}" --split test --method zeroshot,falip --set falip.region=auto --output $out/test_auto > /dev/null
for a in 0.2 1 3 10 30 100; do
  for k in 2 3 6; do
    focusshot evaluate "${common[@]}" --split val --method zeroshot,falip --set falip.alpha=$a \
      --set falip.layers=$k --output $out/val_a${a}_k${k} > /dev/null
  done
done
python $out/sweep_table.py > $out/sweep.md   # chose alpha 100, last 3 blocks
focusshot evaluate "${common[@]}" --split test --method zeroshot,falip,falip_tip --set falip.alpha=100 \
  --set falip.layers=3 --set falip_tip.alpha=100 --set falip_tip.layers=3 --output $out/test_a100_k3 > /dev/null
focusshot evaluate "${common[@]}" --split test --method zeroshot,falip --set falip.alpha=100 \
  --set falip.layers=3 --set falip.region=auto --output $out/test_a100_k3_auto > /dev/null
focusshot evaluate "${common[@]}" --split test --method zeroshot,falip --set falip.alpha=3 \
  --set falip.layers=6 --output $out/test_a3_k6 > /dev/null
