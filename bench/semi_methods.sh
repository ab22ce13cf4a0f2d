#!/usr/bin/env bash
# Semi-supervised method choice on HAM10000: mean teacher vs pseudo-labels vs the labeled images
# alone (unlabeled_weight 0, same code path), 25% of the training masks kept.
#   bench/semi_methods.sh [OUT_DIR]        (IMAGES=2000 and EPOCHS=6 override the sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/semi-methods}
for variant in mean_teacher pseudo_label labeled_only; do
  method=$variant; weight=1.0
  if [ "$variant" = labeled_only ]; then method=mean_teacher; weight=0.0; fi
  spec="{\"setting\": \"semi_supervised\", \"image_size\": 64, \"sample\": {\"max_images\": ${IMAGES:-2000}},
         \"split\": {\"group_column\": \"lesion_id\"}, \"train\": {\"epochs\": ${EPOCHS:-6}},
         \"semi\": {\"labeled_fraction\": 0.25, \"method\": \"$method\", \"unlabeled_weight\": $weight}}"
  mkdir -p "$out"
  echo "$spec" > "$out/$variant.json"
  .venv/bin/htl run ../shared/data/ham10000 --spec "$out/$variant.json" --out "$out/$variant" 2>/dev/null | grep -E "^  (dense|attended) " | sed "s/^ */$variant /"
done
