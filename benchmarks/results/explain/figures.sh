#!/usr/bin/env bash
# The "Explain a prediction" page's figure: protonet, zeroshot and sav fitted with world-clip on
# world:clutter (5 scenes per class), each explained on the same scene (label: cyan striped
# square); their three figures stacked into benchmarks/results/explain/figure.png. Run from the
# checkout root.
set -euo pipefail
repo=$(pwd)
cache=${FOCUSSHOT_CACHE:-$HOME/.cache/focusshot}
tmp=$(mktemp -d)
cd "$tmp"
ln -s "$cache/world" world
scene=world/clutter-s64-n30-seed0/images/cyan_striped_square/001.png
for method in protonet zeroshot sav; do
  focusshot fit "world:clutter?per_class=5" --backbone world-clip --method "$method" \
    --output "$method.safetensors" --quiet
  focusshot explain "$method.safetensors" "$scene" --output "$method" --quiet
done
python - "$repo/benchmarks/results/explain/figure.png" <<'PY'
import sys
from PIL import Image, ImageDraw
parts = [(m, Image.open(f"{m}/000_001.png")) for m in ("protonet", "zeroshot", "sav")]
width = max(im.width for _, im in parts) + 80
sheet = Image.new("RGB", (width, sum(im.height for _, im in parts)), (255, 255, 255))
y = 0
for name, im in parts:
    ImageDraw.Draw(sheet).text((4, y + im.height // 2), name, fill=(0, 0, 0))
    sheet.paste(im, (80, y))
    y += im.height
sheet.save(sys.argv[1])
PY
rm -rf "$tmp"
