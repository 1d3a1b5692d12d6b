#!/usr/bin/env bash
# Where [CLS] looks under FALIP's bias and the drawn prompts: the same test episodes as run.sh,
# each line now carrying cls_target_mass (last-layer [CLS] patch mass on the target mask).
set -euo pipefail
out=benchmarks/results/falip
common=(--backbone world-clip --data "world:clutter?per_class=60&split=1" --ways 5 --shots 1 --queries 10
        --episodes 100 --seed 0 --quiet --split test)
focusshot evaluate "${common[@]}" --method zeroshot,falip,red_circle,blur_box --output $out/cls_mass_prompts > /dev/null
focusshot evaluate "${common[@]}" --method zeroshot,falip --set falip.alpha=100 --set falip.layers=3 \
  --output $out/cls_mass_a100_k3 > /dev/null
# the wrong region: each image's first distractor's box (the target masks stay the target's)
wrong=(--backbone world-clip --data "world:clutter?per_class=60&split=1&box=distractor" --ways 5 --shots 1
       --queries 10 --episodes 100 --seed 0 --quiet --split test)
focusshot evaluate "${wrong[@]}" --method zeroshot,falip --output $out/distractor_a0.2_k4 > /dev/null
focusshot evaluate "${wrong[@]}" --method zeroshot,falip --set falip.alpha=100 --set falip.layers=3 \
  --output $out/distractor_a100_k3 > /dev/null
