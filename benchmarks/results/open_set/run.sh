#!/usr/bin/env bash
# Open-set episodes on world-clip / world:clutter (issue 33): 5 known ways with 1 or 5 shots and
# 15 queries each, 5 unknown ways with as many unknown queries (75), 200 episodes, seed 0; every
# frozen head, zero-shot, Tip-Adapter and SAV, each with every open-set score it gives.
set -euo pipefail
out=benchmarks/results/open_set
methods=protonet,nearest_neighbour,ridge,r2d2,svm,metaoptnet,logistic,zeroshot,tip_adapter,sav
for k in 1 5; do
  focusshot evaluate --backbone world-clip --data world:clutter --method $methods \
    --ways 5 --shots $k --episodes 200 --open-ways 5 --quiet \
    --output $out/world_clip_5way${k}shot > /dev/null
done
# EfficientNet-Lite0 (ImageNet weights) on the clothing-small photos, split protocol: five classes
# held out of training, their test photos the unknown ones; 1 and 5 shots, seeds 1-3.
focusshot evaluate --backbone efficientnet-lite0 --data ../shared/datasets/clothing-small \
  --protocol split --shots 1,5 --seeds 1,2,3 --open-classes shirt,shoes,shorts,skirt,t-shirt \
  --method protonet,nearest_neighbour,ridge,r2d2,svm,metaoptnet,logistic --quiet \
  --output $out/effnet_clothing_split > /dev/null
# LoRA trains per episode (2 to 6 s each here on one thread): the same 200 episodes at 1 and 5
# shots, beside ProtoNet (whose rows equal the runs above; table.py checks it).
for k in 1 5; do
  focusshot evaluate --backbone world-clip --data world:clutter --method protonet,lora \
    --ways 5 --shots $k --episodes 200 --open-ways 5 --quiet \
    --output $out/world_clip_5way${k}shot_lora > /dev/null
done
# fit --reject auto at one image per class (issue 33: augmented views of the support play the known
# images): the same 1-shot episodes again, for the methods the how-to reports, now with open-set
# accuracy at the auto threshold.
focusshot evaluate --backbone world-clip --data world:clutter \
  --method protonet,logistic,zeroshot,tip_adapter,sav \
  --ways 5 --shots 1 --episodes 200 --open-ways 5 --quiet \
  --output $out/world_clip_5way1shot_auto > /dev/null
# The methods that read each image's box (FocusWorld's target boxes) at 1 shot, beside ProtoNet on
# the same episodes: --reject auto from augmented views that carry their image's box.
focusshot evaluate --backbone world-clip --data world:clutter \
  --method protonet,falip,falip_tip,red_circle,blur_box \
  --ways 5 --shots 1 --episodes 200 --open-ways 5 --quiet \
  --output $out/world_clip_5way1shot_regions > /dev/null
