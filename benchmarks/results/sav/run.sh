#!/usr/bin/env bash
# SAV on world-clip (6 layers x 3 heads = 18 heads): selected heads vs random heads vs all heads,
# beside protonet and logistic on pooled features; 5-way, 10 queries, 100 episodes, seed 0.
set -euo pipefail
out=benchmarks/results/sav
for suite in clutter single; do
  for k in 1 5 20; do
    for cfg in "best3:heads=3,selection=best" "random3:heads=3,selection=random" "best6:heads=6,selection=best" \
               "random6:heads=6,selection=random" "all18:heads=18,selection=best"; do
      name=${cfg%%:*}; opts=${cfg#*:}
      sets=(); IFS=, read -ra kv <<< "$opts"; for x in "${kv[@]}"; do sets+=(--set "sav.$x"); done
      focusshot evaluate --backbone world-clip --data "world:$suite" --method protonet,logistic,sav \
        --ways 5 --shots $k --queries 10 --episodes 100 --seed 0 --quiet "${sets[@]}" \
        --output $out/${suite}_5w${k}s_$name > /dev/null
    done
  done
done
