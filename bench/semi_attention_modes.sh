#!/usr/bin/env bash
# Semi-supervised attention on HAM10000 (2,000 images, 64 px, 6 epochs, 3 seeds, a lesion-grouped test
# split, a random control), three ways: fine_tune (2 epochs on top of each dense model at lr x 0.1),
# from_scratch x6 and from_scratch x2. The fine_tune job runs first; the from_scratch jobs re-use its
# dense, label-check and score units (`htl run --reuse-from`: copied into their folders, since they
# depend on nothing in attention): all three share their dense models.
#   bench/semi_attention_modes.sh [OUT_DIR]
# IMAGES (2000), EPOCHS (6) and SEEDS ("0, 1, 2") override the sizes (bench/smoke.sh runs it tiny).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/semi-attention-modes}
mkdir -p "$out"
htl=".venv/bin/htl"
data=../shared/data/ham10000
common="\"setting\": \"semi_supervised\", \"semi\": {\"labeled_fraction\": 0.25}, \"split\": {\"group_column\": \"lesion_id\", \"test_fraction\": 0.2}, \"image_size\": 64, \"sample\": {\"max_images\": ${IMAGES:-2000}}, \"train\": {\"epochs\": ${EPOCHS:-6}, \"seeds\": [${SEEDS:-0, 1, 2}]}"
echo "{$common, \"attention\": {\"control\": \"random\", \"mode\": \"fine_tune\"}}" > "$out/fine_tune.json"
echo "{$common, \"attention\": {\"control\": \"random\", \"mode\": \"from_scratch\"}}" > "$out/from_scratch.json"
echo "{$common, \"attention\": {\"control\": \"random\", \"mode\": \"from_scratch\", \"factor\": 2}}" > "$out/from_scratch-x2.json"
$htl run $data --spec "$out/fine_tune.json" --out "$out/fine_tune" > "$out/fine_tune.log" 2>&1
for name in from_scratch from_scratch-x2; do
  $htl run $data --spec "$out/$name.json" --out "$out/$name" --reuse-from "$out/fine_tune" > "$out/$name.log" 2>&1
done
.venv/bin/python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
ci = lambda c: f"{c['overall']['dice']:+.4f} [{c['overall_ci95']['dice'][0]:+.4f}, {c['overall_ci95']['dice'][1]:+.4f}]" if c['overall_ci95']['dice'] else f"{c['overall']['dice']:+.4f}"
focus = lambda e: f"{e['difference']:+.4f} [{e['ci95'][0]:+.4f}, {e['ci95'][1]:+.4f}]" if None not in e['ci95'] else f"{e['difference']:+.4f}"
print("| variant | validation attended - dense | **validation focus: attended - control** | test attended - dense | test attended - control | test focus: attended - control |")
print("|---|---|---|---|---|---|")
for name in ("fine_tune", "from_scratch", "from_scratch-x2"):
    m = json.load(open(f"{out}/{name}/metrics.json"))
    v = m.get("validation_endpoint", m)
    print(f"| {name} | {ci(m['attended_vs_dense'])} | {focus(v['attended_vs_control'])} | {ci(m['attended_vs_dense']['test'])} "
          f"| {ci(m['attended_vs_control']['test'])} | {focus(m['attended_vs_control']['focus'])} |")
PY
