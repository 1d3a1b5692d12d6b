#!/usr/bin/env bash
# FORT at 5 shots in the regimes that let attention move, and FT (issue 23): world:clutter, 5-way
# 5-shot, 15 queries, seed 0 - the episodes of run_5shot.sh, whose first EPISODES episodes these
# rows pair with. The regimes are the ones the 1-shot validation split chose (run.sh, run_ssf.sh),
# not re-chosen at 5 shots:
#   lr5e2cls:    LoRA at lr 5e-2, loss on the [CLS] row (fort_alpha 0.5, as FORT's LoRA default);
#   lr5e2cls_a5: SSF at lr 5e-2, loss on the [CLS] row, fort_alpha 0.5;
#   b2:          the last 2 blocks fully, AdamW lr 1e-3, 25 epochs, weight decay 0, rows cls,
#                fort_alpha 0.5;
#   ft:          FT at FORT's official defaults (all blocks, lr 1e-5, 5 epochs, fort_alpha 3e-2).
# Each with plain, +fort (rollout prompts) and +fort with box prompts (the oracle).
#
#   bash benchmarks/results/dino/run_5shot_regime.sh world-dino   # (and world-clip)
#
# Run from the checkout root; one thread.
set -euo pipefail
bb=${1:?backbone}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
opts=(--set lora@lr5e2cls.lr=0.05 --set ssf@lr5e2.lr=0.05 --set ft@b2.blocks=2 --set ft@b2.lr=0.001
      --set ft@b2.epochs=25 --set ft@b2.weight_decay=0 --set ft+fort@box.prompts=box)
for a in lora+fort@lr5e2cls lora+fort@lr5e2cls_box ssf+fort@lr5e2cls_a5 ssf+fort@lr5e2cls_a5_box; do
  opts+=(--set "$a.lr=0.05" --set "$a.rows=cls")
done
opts+=(--set ssf+fort@lr5e2cls_a5.fort_alpha=0.5 --set ssf+fort@lr5e2cls_a5_box.fort_alpha=0.5)
for a in ft+fort@b2 ft+fort@b2_box; do
  opts+=(--set "$a.blocks=2" --set "$a.lr=0.001" --set "$a.epochs=25" --set "$a.weight_decay=0"
         --set "$a.rows=cls" --set "$a.fort_alpha=0.5")
done
for a in lora+fort@lr5e2cls_box ssf+fort@lr5e2cls_a5_box ft+fort@b2_box; do
  opts+=(--set "$a.prompts=box")
done
methods=lora@lr5e2cls,lora+fort@lr5e2cls,lora+fort@lr5e2cls_box,ssf@lr5e2,ssf+fort@lr5e2cls_a5
methods=$methods,ssf+fort@lr5e2cls_a5_box,ft@b2,ft+fort@b2,ft+fort@b2_box,ft,ft+fort,ft+fort@box
focusshot evaluate --backbone "$bb" --data world:clutter --ways 5 --shots 5 --queries 15 \
  --episodes "${EPISODES:-50}" --seed 0 --quiet --no-report --method "$methods" "${opts[@]}" \
  --output "benchmarks/results/dino/${bb}_clutter_5w5s_regime"
