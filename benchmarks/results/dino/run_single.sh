#!/usr/bin/env bash
# Is where the model looks what limits world-dino? (issue 23) Frozen ProtoNet and logistic probe,
# 5-way 1-shot, 10 queries, 100 episodes, seed 0, on world:single (the object alone, larger, no
# distractors) and on world:clutter (the object among 1-4 distractors, often one attribute away):
# the same novel classes. If clutter costs a backbone little, looking better at the target cannot
# gain it much either; world-clip is the comparison.
#
#   bash benchmarks/results/dino/run_single.sh world-dino world-clip
#
# Run from the checkout root; one thread.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for bb in "$@"; do
  for suite in single clutter; do
    focusshot evaluate --backbone "$bb" --data "world:$suite" --ways 5 --shots 1 --queries 10 \
      --episodes 100 --seed 0 --quiet --no-report --method protonet,logistic \
      --output "benchmarks/results/dino/${bb}_frozen_${suite}_5w1s"
  done
done
