"""Choose weak.cam_threshold by measurement: load the dense classifier(s) of a finished
weakly-supervised run and score their positive-class activation maps, relative to each image's
background, on its positive validation images at a range of thresholds (localization Dice at the
original image size). bench/weak_localizer.py chooses the map's resolution and threshold together.

    .venv/bin/python bench/cam_threshold.py runs/weak-threshold ../shared/data/ham10000

(the run folder, and the dataset folder it was run on: a run folder keeps the dataset's identity by
content, not its path)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from contract.jobspec import JobSpec
from ml.checkpoints import load_checkpoint
from ml.data import read_mask
from ml.metrics import image_metrics
from ml.pipeline import Run
from ml.train import iterate_batches, predict_logits, prepare_for_device

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: bench/cam_threshold.py RUN_DIR DATA_DIR (the dataset folder the run was made on)")
    out, data_dir = Path(sys.argv[1]), Path(sys.argv[2])
    spec = JobSpec.model_validate(json.loads((out / "spec.json").read_text()))
    run = Run(data_dir, spec, out, device="cpu").job  # refuses a dataset other than the run's
    data = run.decoded()
    results = {}
    for path in sorted((out / "checkpoints").glob("dense*.safetensors")):
        model, _ = load_checkpoint(path)
        model.cam_threshold = 0.0  # forward now answers the relative map itself
        model = prepare_for_device(model, "cpu", precision="fp32").eval()
        dice = {t: [] for t in THRESHOLDS}
        scored = dict(zip(run.val_idx, run.targets.localizable(run.val_idx)))  # positives with a mask
        for batch in iterate_batches(run.val_idx, 64):
            images, _ = data.batch(batch)
            maps = predict_logits(model, images)
            for j, i in enumerate(batch):
                record = run.index.records[i]
                if not scored[i]:
                    continue
                truth = read_mask(record.mask_path)
                full = F.interpolate(maps[j : j + 1], size=truth.shape, mode="bilinear", align_corners=False)[
                    0, 0
                ].numpy()
                for t in THRESHOLDS:
                    dice[t].append(image_metrics(truth, full > t)["dice"])
        results[path.stem] = {str(t): round(float(np.mean(v)), 4) for t, v in dice.items()}
    print(json.dumps(results, indent=1))
    means = {t: np.mean([r[str(t)] for r in results.values()]) for t in THRESHOLDS}
    print(
        "best threshold by mean validation Dice:",
        max(means, key=means.get),
        {t: round(float(m), 4) for t, m in means.items()},
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
