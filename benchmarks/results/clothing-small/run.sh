#!/usr/bin/env bash
# The real run of the README's clothing-small table. Run from the repository root with focusshot
# installed (pip install -e ".[efficientnet]"); the data set lies beside the checkout in ../shared.
# (First run in a scratch folder with FOCUSSHOT_CACHE in it; the summaries were copied here.)
set -e
D=../shared/datasets/clothing-small
M=nearest_neighbour,protonet,ridge,r2d2,svm,metaoptnet,logistic
OUT=${OUT:-runs/clothing-small}
export FOCUSSHOT_CACHE=${FOCUSSHOT_CACHE:-$OUT/cache}
mkdir -p "$OUT"
for K in 1 5; do
  /usr/bin/time -v focusshot evaluate --backbone efficientnet-lite0 --data $D --protocol episodic --split train --method $M --ways 10 --shots $K --queries 15 --episodes 600 --seed 0 --output "$OUT/episodic_10w${K}s" --quiet > "$OUT/episodic_10w${K}s.log" 2>&1
done
focusshot evaluate --backbone efficientnet-lite0 --data $D --protocol split --method $M --shots 1,2,4,8,16 --seeds 1,2,3 --output "$OUT/split" --quiet > "$OUT/split.log" 2>&1
echo finished
