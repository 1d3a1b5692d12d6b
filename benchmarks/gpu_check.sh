#!/usr/bin/env bash
# The CUDA paths, proven on one GPU in under 8 minutes; results under the folder given:
#
#   bash benchmarks/gpu_check.sh RESULTS_DIR
#
# 1. the CUDA-marked tests (pytest -m cuda: attention recording on the device, extraction eager /
#    compiled / bf16 against the CPU, bf16 autocast training, a LoRA(+FORT) episode, MetaOptNet);
# 2. a tiny-model `evaluate` with every registered method on cuda;
# 3. extraction of a ViT-B/16-sized random model: ours eager, compiled and bf16 against
#    transformers' CLIP vision model with the same weights, in one run (bench_backbone.py);
# 4. 20 `lora` and 20 `lora+fort` episodes on world-clip-deep on cuda: seconds per episode;
# 5. `torchrun --nproc_per_node 1`: NCCL's collectives (nccl_check.py; with one rank focusshot
#    itself starts no process group), and an `evaluate --device auto` through torchrun.
# Every step has its own time limit and log; a failing step does not stop the others. The
# script ends non-zero when any step failed. RESULTS_DIR/summary.md gathers what was measured.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash benchmarks/gpu_check.sh RESULTS_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export HF_HUB_OFFLINE=1 FOCUSSHOT_CACHE="$OUT/cache" PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
failed=0

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "| $name | $rc | $((SECONDS - start)) |" >>"$OUT/steps.md"
  if [ "$rc" != 0 ]; then
    failed=1
    echo "   failed (rc $rc): tail of $OUT/$name.log"
    tail -n 15 "$OUT/$name.log"
  fi
}

echo "| step | rc | seconds |" >"$OUT/steps.md"
echo "|---|---|---|" >>"$OUT/steps.md"
$PY - >"$OUT/device.json" <<'EOF'
import json, platform, torch, focusshot
ok = torch.cuda.is_available()
print(json.dumps({
    "focusshot": focusshot.__version__, "torch": torch.__version__, "cuda": torch.version.cuda,
    "device": torch.cuda.get_device_name(0) if ok else None, "python": platform.python_version(),
}, indent=2))
EOF
cat "$OUT/device.json"

step cuda_tests 150 $PY -m pytest tests -m cuda -q -rs -p no:cacheprovider

methods=$($PY -c "from focusshot.methods.base import list_methods; print(','.join(list_methods()))")
step every_method_cuda 120 $PY -m focusshot evaluate --device cuda --backbone tiny-clip-vit --random-weights \
  --data "world:clutter?per_class=4" --method "$methods" --ways 3 --shots 1 --queries 2 --episodes 2 \
  --no-report --quiet --output "$OUT/every_method"

step extraction_vit_b16 150 $PY benchmarks/bench_backbone.py --device cuda --models clip-vit-b16 \
  --batch 64 --repeats 3 --output "$OUT/backbone_cuda.json"

step lora_fort_world_clip_deep 150 $PY -m focusshot evaluate --device cuda --backbone world-clip-deep \
  --data world:clutter --method lora,lora+fort --ways 5 --shots 1 --episodes 20 --no-report --quiet \
  --output "$OUT/lora_fort"

step nccl_collectives 60 $PY -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/nccl_check.py
step torchrun_evaluate 90 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m focusshot evaluate \
  --device auto --backbone tiny-vit --random-weights --data "world:clutter?per_class=4" \
  --method protonet,lora --set lora.steps=3 --ways 3 --episodes 4 --queries 2 --no-report --quiet \
  --output "$OUT/torchrun"

$PY - "$OUT" >"$OUT/summary.md" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("# gpu_check\n")
print(Path(out, "device.json").read_text())
print(Path(out, "steps.md").read_text())
bb = out / "backbone_cuda.json"
if bb.is_file():
    for r in json.loads(bb.read_text())["results"]:
        print(f"- {r['model']} batch {r['batch']}: eager {r['ours_images_per_s']:.0f} img/s, compiled "
              f"{r['compiled_images_per_s']:.0f}, bf16 {r.get('bf16_images_per_s', float('nan')):.0f}, "
              f"transformers {r['transformers_images_per_s']:.0f} (ours/transformers "
              f"{r['ours_over_transformers']:.2f}x, compiled {r['compiled_over_transformers']:.2f}x); "
              f"max diff {r['max_abs_feature_diff']:.1e}, bf16 rel. L2 {r.get('bf16_relative_l2_error', float('nan')):.1e}")
t = out / "lora_fort" / "timing.json"
if t.is_file():
    for m, v in json.loads(t.read_text()).items():
        print(f"- world-clip-deep {m}: {v['seconds_per_episode']:.2f} s per episode ({v['episodes']} episodes)")
for name in ("lora_fort", "every_method", "torchrun"):
    s = out / name / "summary.md"
    if s.is_file():
        print(f"\n## {name}\n\n{s.read_text()}")
EOF
cat "$OUT/summary.md"
exit $failed
