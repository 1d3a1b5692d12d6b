#!/usr/bin/env bash
set -e
source /work/venv/bin/activate
cd /work/realrun
D=/work/shared/datasets/clothing-small
M=nearest_neighbour,protonet,ridge,r2d2,svm,metaoptnet,logistic
export FOCUSSHOT_CACHE=/work/realrun/cache
for K in 5; do
  /usr/bin/time -v focusshot evaluate --backbone efficientnet-lite0 --data $D --protocol episodic --split train --method $M --ways 10 --shots $K --queries 15 --episodes 600 --seed 0 --output episodic_10w${K}s --quiet > episodic_10w${K}s.log 2>&1
done
focusshot evaluate --backbone efficientnet-lite0 --data $D --protocol split --method $M --shots 1,2,4,8,16 --seeds 1,2,3 --output split --quiet > split.log 2>&1
echo finished
