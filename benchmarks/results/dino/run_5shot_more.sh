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
# The default group carries SSF at lr 5e-2 and two-block FT. The options are not spelled out here:
# they are read from the source run's run.json (the carried methods' method_options, passed as an
# options file), so they cannot drift from run_5shot_regime.sh's; after the run the script checks
# that the new run.json records the same options.
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
# the stored logs are results.jsonl.gz (benchmarks/compress_runs.py); evaluate resumes from either form
if [ ! -s "$out/results.jsonl" ] && [ ! -s "$out/results.jsonl.gz" ]; then
  python3 -c '
import json, sys
from focusshot.evaluation.results import results_lines
keep = set(sys.argv[2].split(","))
for line in results_lines(sys.argv[1]):
    if json.loads(line)["method"] in keep:
        sys.stdout.write(line + "\n")
' "$src" "$methods" > "$out/results.jsonl"
fi
opts_file=$(mktemp --suffix=.json)
trap 'rm -f "$opts_file"' EXIT
python3 -c '
import json, sys
options = json.load(open(sys.argv[1] + "/run.json"))["config"]["method_options"]
json.dump({m: options[m] for m in sys.argv[2].split(",")}, open(sys.argv[3], "w"), indent=1)
' "$src" "$methods" "$opts_file"
focusshot evaluate --backbone "$bb" --data world:clutter --ways 5 --shots 5 --queries 15 \
  --episodes 100 --seed 0 --quiet --no-report --method "$methods" --config "$opts_file" --output "$out"
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
