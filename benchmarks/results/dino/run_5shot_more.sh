#!/usr/bin/env bash
# run_5shot_regime.sh's rows taken to 100 episodes (issue 23): the same
# methods, options and episodes (world:clutter, 5-way 5-shot, 15 queries, seed 0). The new folder
# starts from run_5shot_regime.sh's rows of these methods (its first EPISODES episodes), and the
# evaluator's resume computes only the episodes it lacks: a row depends on its method's options,
# the episode and the seed, not on which other methods share the run (the 20- and 100-episode
# world-dino runs of run_5shot.sh agree row for row). Run after run_5shot_regime.sh.
#
#   bash benchmarks/results/dino/run_5shot_more.sh world-dino             # (and world-clip)
#   GROUP=ft bash benchmarks/results/dino/run_5shot_more.sh world-dino    # official FT's rows
#   GROUP=lora bash benchmarks/results/dino/run_5shot_more.sh world-dino  # LoRA at lr 5e-2's rows
#
# The default group carries SSF at lr 5e-2 and two-block FT. Once the run has written its run.json,
# the script checks that the carried methods' options there equal those in the source run.json,
# so a drift between this script's options and run_5shot_regime.sh's is caught, not averaged in.
#
# Run from the checkout root; one thread.
set -euo pipefail
bb=${1:?backbone}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
src=benchmarks/results/dino/${bb}_clutter_5w5s_regime
if [ "${GROUP:-}" = ft ]; then
  out=benchmarks/results/dino/${bb}_clutter_5w5s_regime100ft
  methods=ft,ft+fort,ft+fort@box
elif [ "${GROUP:-}" = lora ]; then
  out=benchmarks/results/dino/${bb}_clutter_5w5s_regime100lora
  methods=lora@lr5e2cls,lora+fort@lr5e2cls,lora+fort@lr5e2cls_box
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
check_options() {
  python3 -c '
import json, sys
src, out, methods = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
a = json.load(open(src + "/run.json"))["config"]["method_options"]
b = json.load(open(out + "/run.json"))["config"]["method_options"]
bad = [m for m in methods if a.get(m) != b.get(m)]
if bad:
    sys.exit(f"{out}/run.json: options of {bad} differ from {src}/run.json; the carried rows are not comparable")
print(f"{out}: options of {len(methods)} methods equal those in {src}/run.json")
' "$src" "$out" "$methods"
}
opts=()
if [ "${GROUP:-}" = ft ]; then
  opts+=(--set ft+fort@box.prompts=box)
elif [ "${GROUP:-}" = lora ]; then
  opts+=(--set lora@lr5e2cls.lr=0.05)
  for a in lora+fort@lr5e2cls lora+fort@lr5e2cls_box; do
    opts+=(--set "$a.lr=0.05" --set "$a.rows=cls")
  done
  opts+=(--set lora+fort@lr5e2cls_box.prompts=box)
else
  opts+=(--set ssf@lr5e2.lr=0.05 --set ft@b2.blocks=2 --set ft@b2.lr=0.001 --set ft@b2.epochs=25
         --set ft@b2.weight_decay=0)
  for a in ssf+fort@lr5e2cls_a5 ssf+fort@lr5e2cls_a5_box; do
    opts+=(--set "$a.lr=0.05" --set "$a.rows=cls" --set "$a.fort_alpha=0.5")
  done
  for a in ft+fort@b2 ft+fort@b2_box; do
    opts+=(--set "$a.blocks=2" --set "$a.lr=0.001" --set "$a.epochs=25" --set "$a.weight_decay=0"
           --set "$a.rows=cls" --set "$a.fort_alpha=0.5")
  done
  opts+=(--set ssf+fort@lr5e2cls_a5_box.prompts=box --set ft+fort@b2_box.prompts=box)
fi
focusshot evaluate --backbone "$bb" --data world:clutter --ways 5 --shots 5 --queries 15 \
  --episodes 100 --seed 0 --quiet --no-report --method "$methods" "${opts[@]}" --output "$out"
check_options
