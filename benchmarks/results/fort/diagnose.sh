#!/usr/bin/env bash
# Why FORT does (not) help on world-clip: oracle box prompts and a stronger attention loss, LoRA,
# on the same 100 episodes as run.sh (seed 0); paired against run.sh's lora by table.py.
# Run from the checkout root after run.sh: bash benchmarks/results/fort/diagnose.sh
# (DIAGS, SHOTS and EPISODES pick the runs; default: box and alpha5 at 1 shot, 100 episodes;
# plain_lr10x is lora+fort with fort_alpha 0, i.e. plain LoRA, at the same lr as box_lr10x.)
set -euo pipefail
out=benchmarks/results/fort
for k in ${SHOTS:-1}; do
  base=(evaluate --backbone world-clip --data world:clutter --method lora+fort --shots "$k" --episodes "${EPISODES:-100}" --quiet)
  for d in ${DIAGS:-box alpha5}; do
    case "$d" in
      box) opts=(--set lora+fort.prompts=box) ;;
      alpha5) opts=(--set lora+fort.fort_alpha=5) ;;
      box_alpha5) opts=(--set lora+fort.prompts=box --set lora+fort.fort_alpha=5) ;;
      lamb100) opts=(--set lora+fort.lamb=100) ;;
      box_lr10x) opts=(--set lora+fort.prompts=box --set lora+fort.lr=0.05) ;;
      plain_lr10x) opts=(--set lora+fort.fort_alpha=0 --set lora+fort.lr=0.05) ;;
      box_cls_lr10x) opts=(--set lora+fort.prompts=box --set lora+fort.rows=cls --set lora+fort.lr=0.05) ;;
      *) echo "unknown diagnosis $d" >&2; exit 2 ;;
    esac
    [ -f "$out/diag_5w${k}s_$d/summary.md" ] || focusshot "${base[@]}" "${opts[@]}" --output "$out/diag_5w${k}s_$d"
  done
done
