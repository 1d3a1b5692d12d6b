#!/usr/bin/env bash
# world-clip-deep (12 layers x 6 heads = 72 heads; ViT-B/16's depth): zero-shot accuracy, FALIP and
# SAV with the settings run on world-clip (benchmarks/results/falip/run.sh, sav/run.sh), so the
# papers' layer and head defaults are tested at the depth they were set for.
# Tables: python benchmarks/results/deep/table.py
set -euo pipefail
out=benchmarks/results/deep
mkdir -p $out
for s in single clutter base; do
  focusshot world zeroshot --backbone world-clip-deep --data world:$s
done > $out/zeroshot.txt

# FALIP: world:clutter with splits, 5-way 1-shot, 10 queries, 100 episodes, seed 0
common=(--backbone world-clip-deep --data "world:clutter?per_class=60&split=1" --ways 5 --shots 1 --queries 10
        --episodes 100 --seed 0 --quiet --no-report)
# 1) the paper's defaults (alpha 0.2, last 4 of 12 blocks), the automatic region, the drawn prompts: test
focusshot evaluate "${common[@]}" --split test --method zeroshot,falip,falip@auto,red_circle,blur_box \
  --set falip@auto.region=auto --output $out/falip_test_default > /dev/null
# 2) alpha x biased blocks on validation, every setting in one run (aliases a<alpha>k<blocks>)
methods=zeroshot; sets=()
for a in 0.2 1 3 10 30 100; do
  for k in 2 4 6 12; do
    name="falip@a${a/./p}k$k"; methods+=",$name"; sets+=(--set "$name.alpha=$a" --set "$name.layers=$k")
  done
done
focusshot evaluate "${common[@]}" --split val --method "$methods" "${sets[@]}" --output $out/falip_val_sweep > /dev/null
# 3) the setting chosen on validation, on test: true box, automatic box; then a distractor's box
read -r A K < <(python $out/table.py --best-falip)
focusshot evaluate "${common[@]}" --split test --method zeroshot,falip,falip@auto,falip_tip \
  --set falip.alpha=$A --set falip.layers=$K --set falip@auto.alpha=$A --set falip@auto.layers=$K \
  --set falip@auto.region=auto --set falip_tip.alpha=$A --set falip_tip.layers=$K \
  --output $out/falip_test_chosen > /dev/null
wrong=(--backbone world-clip-deep --data "world:clutter?per_class=60&split=1&box=distractor" --ways 5 --shots 1
       --queries 10 --episodes 100 --seed 0 --quiet --no-report --split test)
focusshot evaluate "${wrong[@]}" --method zeroshot,falip,falip@chosen --set falip@chosen.alpha=$A \
  --set falip@chosen.layers=$K --output $out/falip_test_distractor > /dev/null

# SAV: 5-way, 10 queries, 100 episodes, seed 0; 20 heads (the paper's count), 2 heads (the paper's
# share, 20 of 784 = 2.6%, of 72), 6 heads, and every head, with random-head controls
for suite in clutter single; do
  for k in 1 5 20; do
    focusshot evaluate --backbone world-clip-deep --data "world:$suite" --ways 5 --shots $k --queries 10 \
      --episodes 100 --seed 0 --quiet --no-report \
      --method protonet,logistic,sav,sav@random20,sav@best2,sav@random2,sav@best6,sav@random6,sav@all72 \
      --set sav.heads=20 --set sav@random20.heads=20 --set sav@random20.selection=random \
      --set sav@best2.heads=2 --set sav@random2.heads=2 --set sav@random2.selection=random \
      --set sav@best6.heads=6 --set sav@random6.heads=6 --set sav@random6.selection=random \
      --set sav@all72.heads=72 --output $out/sav_${suite}_5w${k}s > /dev/null
  done
done
