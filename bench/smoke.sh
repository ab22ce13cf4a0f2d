#!/usr/bin/env bash
# Every command BENCHMARKS.md gives, at toy sizes, so that a script that no longer runs shows here
# rather than to the next reader (a bench that crashes after an hour of training is found in a minute).
# The numbers it prints mean nothing; the exit status does. Needs PostgreSQL and Redis for the API
# benches (HTL_BENCH_DATABASE_URL, HTL_BENCH_REDIS_URL); the GPU study is checked only to refuse
# cleanly without CUDA.
#   bench/smoke.sh [OUT_DIR]        (default: a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
py=.venv/bin/python
ham=../shared/data/ham10000
: "${HTL_BENCH_DATABASE_URL:?set HTL_BENCH_DATABASE_URL (PostgreSQL) for the API benches}"
: "${HTL_BENCH_REDIS_URL:?set HTL_BENCH_REDIS_URL (Redis) for the worker benches}"
step() { echo "== $*" >&2; }
quiet() { "$@" > "$out/last.log" 2>&1 || { tail -30 "$out/last.log" >&2; echo "smoke: FAILED: $*" >&2; exit 1; }; }

toy_spec() {  # an example spec, shrunk: same structure, a few images and epochs
  $py - "$1" "$2" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
spec.update(image_size=32)
spec.setdefault("sample", {})["max_images"] = 120
spec.setdefault("train", {}).update(epochs=1, seeds=spec.get("train", {}).get("seeds", [0])[:2])
json.dump(spec, open(sys.argv[2], "w"))
PY
}

step bench_pipeline;  quiet $py bench/bench_pipeline.py --images 60 --size 32 --epochs 1 --limit-seconds 0.5
step precision_study; quiet $py bench/precision_study.py --images 120 --size 32 --epochs 1 --seeds 0 1 --out "$out/precision-study"
step remedy_sweep;   quiet $py bench/remedy_sweep.py --images 200 --size 32 --epochs 1 --seeds 0 1 --out "$out/remedy-sweep"
step "remedy_sweep --results and remedy_study"
for seed in 0 1; do
  quiet $py bench/remedy_sweep.py --data $ham --images 150 --size 32 --epochs 1 --seeds $seed --strategies oversample jtt@20 \
    --out "$out/remedy-study/seed$seed" --results "$out/remedy-study/results"
done
quiet $py bench/remedy_study.py --data $ham --results "$out/remedy-study/results" --out "$out/remedy-study/report.json"
step network_cost;   quiet $py bench/network_cost.py --size 32 --width 4 --repeats 1 --out "$out/network-cost.json"
quiet $py bench/network_cost.py --size 32 --width 4 --data $ham --images 120 --epochs 1 --runs "$out/network-runs" --out "$out/network-dice.json"
step label_check_vs_cleanlab; quiet $py bench/label_check_vs_cleanlab.py --images 120 --size 32 --epochs 1 --out "$out/cleanlab-generated"
quiet $py bench/label_check_vs_cleanlab.py --data $ham --images 150 --size 32 --epochs 1 --out "$out/cleanlab-ham"
step enrichment_drift; toy_spec examples/ham10000-triage.json "$out/triage.json"
quiet $py bench/enrichment_drift.py $ham --out "$out/enrichment-drift" --spec triage="$out/triage.json"
step bench_api;       quiet $py bench/bench_api.py --scores 2000 --page 100 --page-requests 5 --poll-seconds 1 --poll-threads 2
step attention_study; quiet $py bench/attention_study.py --images 120 --size 32 --epochs 1 --seeds 0 --out "$out/attention-study"
step semi_methods;    IMAGES=100 EPOCHS=1 quiet bench/semi_methods.sh "$out/semi-methods"
step settings_study;  IMAGES=300 WEAK_EPOCHS=4 SEMI_EPOCHS=1 quiet bench/settings_study.sh "$out/settings-study"
step semi_attention_modes; IMAGES=150 EPOCHS=1 SEEDS=0 quiet bench/semi_attention_modes.sh "$out/semi-attention-modes"
step cam_threshold;   quiet $py bench/cam_threshold.py "$out/settings-study/weak-threshold" $ham
step active_labelling; quiet $py bench/active_labelling.py --images 150 --size 32 --epochs 1 --seeds 0 1 --out "$out/active-labelling"
step weak_localizer;  quiet $py bench/weak_localizer.py --images 120 --size 32 --epochs 1 --seeds 0 --poolings 2 3 --out "$out/weak-localizer"
for example in examples/*.json; do
  name=$(basename "$example" .json)
  step "htl run $example (shrunk)"; toy_spec "$example" "$out/$name.json"
  quiet .venv/bin/htl run $ham --spec "$out/$name.json" --out "$out/$name"
done
step pruning_defaults; quiet $py bench/pruning_defaults.py --images 120 --size 32 --epochs 1 --seeds 0 --out "$out/pruning-defaults"
step control_study;   toy_spec examples/ham10000-controlled.json "$out/controlled.json"
quiet $py bench/control_study.py --spec "$out/controlled.json" --out "$out/control-study"
step "triage_study (generated)"; quiet $py bench/triage_study.py --images 120 --size 32 --epochs 1 --seeds 0 --variants pruning \
  "loss, label issues kept" --modes from_scratch fine_tune --factors 3 6 --folds 2 --prunings global-stale layerwise-bn --out "$out/triage-study"
step "triage_study (HAM10000)"; quiet $py bench/triage_study.py --data $ham --images 150 --size 32 --epochs 1 --seeds 0 1 \
  --variants pruning loss --modes fine_tune --folds 2 --out "$out/triage-ham" --overlays 2 --overlay-dir "$out/overlays"
step label_check_folds; quiet $py bench/label_check_folds.py --images 120 --size 32 --epochs 1 --folds 2 3 --out "$out/label-check-folds"
step attention_cost;  quiet $py bench/attention_cost.py $ham --images 150 --size 32 --epochs 1 --repeats 1
step bench_load;      quiet $py bench/bench_load.py --uploads 2 --upload-seconds 0.5 --pollers 2 --submitters 1 --seconds 3
step bench_workers;   quiet $py bench/bench_workers.py --images 40
step bench_sweep;     quiet $py bench/bench_sweep.py --images 40 --size 32 --epochs 1
step cancel_races;    quiet $py bench/cancel_races.py --rounds 4 --concurrency 2
step gpu_study
if $py -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  EPOCHS=1 SEEDS=0 SETTINGS=supervised quiet bench/gpu_study.sh $ham "$out/gpu-study"
elif bench/gpu_study.sh $ham "$out/gpu-study" > "$out/last.log" 2>&1 || ! grep -q "no CUDA device" "$out/last.log"; then
  echo "smoke: bench/gpu_study.sh should refuse, naming CUDA, on a machine without it" >&2; exit 1
fi
echo "smoke: every bench command ran ($out)"
