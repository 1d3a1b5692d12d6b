#!/usr/bin/env bash
# The README's `focusshot explain` example: lora+fort fitted with world-clip on world:clutter
# (5 scenes per class), explained on four scenes. Run from the checkout root. Paths in
# explain.json are relative: the classifier to a scratch folder, the images to $FOCUSSHOT_CACHE.
set -euo pipefail
repo=$(pwd)
cache=${FOCUSSHOT_CACHE:-$HOME/.cache/focusshot}
tmp=$(mktemp -d)
focusshot fit "world:clutter?per_class=5" --backbone world-clip --method lora+fort \
  --output "$tmp/lora_fort.safetensors" --quiet
cd "$tmp"
ln -s "$cache/world" world
d=world/clutter-s64-n30-seed0/images
focusshot explain lora_fort.safetensors "$d/red_plain_circle/001.png" "$d/cyan_striped_square/001.png" \
  "$d/blue_striped_triangle/001.png" "$d/pink_striped_star/001.png" \
  --output "$repo/benchmarks/results/fort/explain"
rm -rf "$tmp"
