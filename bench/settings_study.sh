#!/usr/bin/env bash
# Dense vs attended vs a random control for the semi- and weakly-supervised settings on HAM10000
# (2,000 images, 64 px, 3 seeds, a lesion-grouped test split), after reading the CAM threshold curve
# of a 1,000-image weakly-supervised run. The semi-supervised job runs twice: attending labeled images
# only (attention.unlabeled leave_out, the default) and attending pseudo-labels too (attend).
#   bench/settings_study.sh [OUT_DIR]
# IMAGES (2000; the threshold run takes half), SEEDS ("0, 1, 2"), WEAK_EPOCHS (8) and SEMI_EPOCHS (6)
# override the sizes (bench/smoke.sh runs it tiny).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/settings-study}
mkdir -p "$out"
htl=".venv/bin/htl"
data=../shared/data/ham10000
images=${IMAGES:-2000}
weak_epochs=${WEAK_EPOCHS:-8}
semi_epochs=${SEMI_EPOCHS:-6}
seeds=${SEEDS:-0, 1, 2}
weak='"setting": "weakly_supervised", "weak": {"label_column": "dx", "positive": ["mel"]}'
echo "{$weak, \"image_size\": 64, \"sample\": {\"max_images\": $((images / 2))}, \"split\": {\"group_column\": \"lesion_id\"}, \"train\": {\"epochs\": $weak_epochs}}" > "$out/weak-threshold.json"
$htl run $data --spec "$out/weak-threshold.json" --out "$out/weak-threshold" > "$out/weak-threshold.log" 2>&1
.venv/bin/python bench/cam_threshold.py "$out/weak-threshold" $data | tee "$out/cam-threshold.txt"
split='"split": {"group_column": "lesion_id", "test_fraction": 0.2}'
held_out="$split, \"attention\": {\"control\": \"random\"}"
echo "{$weak, $held_out, \"image_size\": 64, \"sample\": {\"max_images\": $images}, \"train\": {\"epochs\": $weak_epochs, \"seeds\": [$seeds]}}" > "$out/weak.json"
$htl run $data --spec "$out/weak.json" --out "$out/weak" > "$out/weak.log" 2>&1
for unlabeled in leave_out attend; do
  name=semi; [ "$unlabeled" = attend ] && name=semi-attend
  echo "{\"setting\": \"semi_supervised\", \"semi\": {\"labeled_fraction\": 0.25}, $split, \"attention\": {\"control\": \"random\", \"unlabeled\": \"$unlabeled\"}, \"image_size\": 64, \"sample\": {\"max_images\": $images}, \"train\": {\"epochs\": $semi_epochs, \"seeds\": [$seeds]}}" > "$out/$name.json"
  $htl run $data --spec "$out/$name.json" --out "$out/$name" > "$out/$name.log" 2>&1
done
echo done
