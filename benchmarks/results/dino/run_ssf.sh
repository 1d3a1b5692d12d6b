#!/usr/bin/env bash
# SSF on world-dino and world-clip (issue 23), 5-way 1-shot on world:clutter?split=1, paired on the
# same episodes as run.sh's LoRA and FT rows (seed 0, 5 queries).
#
#   PHASE=val  bash benchmarks/results/dino/run_ssf.sh BACKBONE   # 30 validation episodes: regime choice
#   PHASE=test bash benchmarks/results/dino/run_ssf.sh BACKBONE   # 100 test episodes
#
# Regimes (method@alias):
#   official: ssf / ssf+fort (FORT's README command for SSF: lr 5e-3, 10 epochs, fort_alpha 0.1,
#             rows all), ssf+fort@box (the data's boxes as prompts: the oracle);
#   lr5e2cls: SSF at lr 5e-2 (10x), the loss on the [CLS] row only (as run.sh's LoRA regime), at the
#             official fort_alpha 0.1 (lr5e2cls) and at 0.5 (lr5e2cls_a5) - the validation split
#             chooses between them; the test phase runs the chosen one (REGIME, default lr5e2cls_a5).
# Run from the checkout root; one thread.
set -euo pipefail
bb=${1:?backbone}
phase=${PHASE:-test}
out=benchmarks/results/dino
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
regime=${REGIME:-lr5e2cls_a5}
alpha_of() { if [ "$1" = lr5e2cls_a5 ]; then echo 0.5; else echo 0.1; fi; }
opts=(--set ssf@lr5e2.lr=0.05)
if [ "$phase" = val ]; then
  split=val; episodes=30
  methods=ssf,ssf+fort,ssf@lr5e2,ssf+fort@lr5e2cls,ssf+fort@lr5e2cls_a5
  for r in lr5e2cls lr5e2cls_a5; do
    opts+=(--set "ssf+fort@$r.lr=0.05" --set "ssf+fort@$r.rows=cls" --set "ssf+fort@$r.fort_alpha=$(alpha_of $r)")
  done
else
  split=test; episodes=100
  methods=ssf,ssf+fort,ssf+fort@box,ssf@lr5e2,ssf+fort@$regime,ssf+fort@${regime}_box
  opts+=(--set ssf+fort@box.prompts=box)
  for r in "$regime" "${regime}_box"; do
    opts+=(--set "ssf+fort@$r.lr=0.05" --set "ssf+fort@$r.rows=cls" --set "ssf+fort@$r.fort_alpha=$(alpha_of "$regime")")
  done
  opts+=(--set "ssf+fort@${regime}_box.prompts=box")
fi
focusshot evaluate --backbone "$bb" --data "world:clutter?split=1" --split "$split" --method "$methods" \
  "${opts[@]}" --ways 5 --shots 1 --queries 5 --episodes "$episodes" --seed 0 --quiet --no-report \
  --output "$out/${bb}_${phase}_5w1s_ssf"
