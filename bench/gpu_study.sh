#!/usr/bin/env bash
# The control study at paper scale, for a CUDA machine: all of HAM10000, 256 px, 60 epochs, 5 seeds,
# lesion-grouped validation and test splits, HTL-attended vs random-control, in each of the three
# settings (supervised; semi-supervised with 25% of masks; weakly supervised from dx labels).
#
#   bench/gpu_study.sh [DATA_DIR] [OUT_DIR]      (defaults: ../shared/data/ham10000, runs/gpu-study)
#
# Each setting writes OUT_DIR/<setting>/{metrics.json,subgroups.json,report.txt}; a rerun resumes
# where it stopped. EPOCHS, SEEDS and SETTINGS override the defaults, e.g. SETTINGS=supervised.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/ham10000}
OUT=${2:-runs/gpu-study}
EPOCHS=${EPOCHS:-60}
SEEDS=${SEEDS:-0,1,2,3,4}
SETTINGS=${SETTINGS:-supervised semi_supervised weakly_supervised}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { scripts/setup; PY=.venv/bin/python; }
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_study: no CUDA device; this study needs one (several GPU-hours at 256 px: an estimate, not measured here)")'
mkdir -p "$OUT/specs"
for setting in $SETTINGS; do
  case $setting in
    supervised) extra='' ;;
    semi_supervised) extra='"semi": {"labeled_fraction": 0.25},' ;;
    weakly_supervised) extra='"model": {"arch": "cnn", "width": 32}, "weak": {"label_column": "dx", "positive": ["mel", "bcc", "akiec"]},' ;;
    *) echo "gpu_study: unknown setting $setting" >&2; exit 2 ;;
  esac
  cat > "$OUT/specs/$setting.json" <<JSON
{
  "setting": "$setting", $extra
  "image_size": 256,
  "split": {"group_column": "lesion_id", "val_fraction": 0.15, "test_fraction": 0.15, "seed": 0},
  "train": {"epochs": $EPOCHS, "batch_size": 32, "seeds": [$SEEDS]},
  "htl": {"top_fraction": 0.1},
  "attention": {"strategy": "oversample", "factor": 3.0, "control": "random"},
  "scorers": ["pruning", "loss", "el2n", "forgetting", "dynamic_dice"]
}
JSON
  echo "gpu_study: $setting -> $OUT/$setting" >&2
  "$PY" bench/control_study.py --data "$DATA" --spec "$OUT/specs/$setting.json" --out "$OUT/$setting" --device cuda
done
