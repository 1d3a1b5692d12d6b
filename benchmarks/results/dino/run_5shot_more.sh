#!/usr/bin/env bash
# run_5shot_regime.sh's SSF and two-block FT rows taken to 100 episodes (issue 23): the same
# methods, options and episodes (world:clutter, 5-way 5-shot, 15 queries, seed 0). The new folder
# starts from run_5shot_regime.sh's rows of these methods (its first EPISODES episodes), and the
# evaluator's resume computes only the episodes it lacks: a row depends on its method's options,
# the episode and the seed, not on which other methods share the run (the 20- and 100-episode
# world-dino runs of run_5shot.sh agree row for row). Run after run_5shot_regime.sh.
#
#   bash benchmarks/results/dino/run_5shot_more.sh world-dino             # (and world-clip)
#   GROUP=ft bash benchmarks/results/dino/run_5shot_more.sh world-dino    # official FT's rows
#
# Run from the checkout root; one thread.
set -euo pipefail
bb=${1:?backbone}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
src=benchmarks/results/dino/${bb}_clutter_5w5s_regime
if [ "${GROUP:-}" = ft ]; then
  out=benchmarks/results/dino/${bb}_clutter_5w5s_regime100ft
  methods=ft,ft+fort,ft+fort@box
else
  out=benchmarks/results/dino/${bb}_clutter_5w5s_regime100
  methods=ssf@lr5e2,ssf+fort@lr5e2cls_a5,ssf+fort@lr5e2cls_a5_box,ft@b2,ft+fort@b2,ft+fort@b2_box
fi
mkdir -p "$out"
if [ ! -s "$out/results.jsonl" ]; then
  python3 -c '
import json, sys
keep = set(sys.argv[2].split(","))
for line in open(sys.argv[1]):
    if json.loads(line)["method"] in keep:
        sys.stdout.write(line)
' "$src/results.jsonl" "$methods" > "$out/results.jsonl"
fi
if [ "${GROUP:-}" = ft ]; then
  focusshot evaluate --backbone "$bb" --data world:clutter --ways 5 --shots 5 --queries 15 \
    --episodes 100 --seed 0 --quiet --no-report --method "$methods" --set ft+fort@box.prompts=box \
    --output "$out"
  exit
fi
opts=(--set ssf@lr5e2.lr=0.05 --set ft@b2.blocks=2 --set ft@b2.lr=0.001 --set ft@b2.epochs=25
      --set ft@b2.weight_decay=0)
for a in ssf+fort@lr5e2cls_a5 ssf+fort@lr5e2cls_a5_box; do
  opts+=(--set "$a.lr=0.05" --set "$a.rows=cls" --set "$a.fort_alpha=0.5")
done
for a in ft+fort@b2 ft+fort@b2_box; do
  opts+=(--set "$a.blocks=2" --set "$a.lr=0.001" --set "$a.epochs=25" --set "$a.weight_decay=0"
         --set "$a.rows=cls" --set "$a.fort_alpha=0.5")
done
opts+=(--set ssf+fort@lr5e2cls_a5_box.prompts=box --set ft+fort@b2_box.prompts=box)
focusshot evaluate --backbone "$bb" --data world:clutter --ways 5 --shots 5 --queries 15 \
  --episodes 100 --seed 0 --quiet --no-report --method "$methods" "${opts[@]}" --output "$out"
