"""What attention costs: one attended model trained from scratch (train.epochs) against one
fine-tuned from the dense model (attention.finetune_epochs), and a label-check fold model, on the
same images and spec, timed directly (seconds and the ratio to the from-scratch model).

    .venv/bin/python bench/attention_cost.py ../shared/data/ham10000 --images 2000 --size 64 --epochs 6 --repeats 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from contract.jobspec import JobSpec
from ml import label_check
from ml.data import decode_dataset, sample_records, scan_dataset, split_indices
from ml.models import ModelConfig
from ml.precision import resolve
from ml.setting import make_targets
from ml.stage_inputs import StageInputs
from ml.stages import boost, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    spec = JobSpec.model_validate(
        {
            "image_size": args.size,
            "train": {"epochs": args.epochs},
            "attention": {"mode": "fine_tune"},
            "split": {"group_column": "lesion_id", "test_fraction": 0.2},
        }
    )
    index = sample_records(scan_dataset(args.data), args.images, 0)
    train, val, _ = split_indices(index, val_fraction=0.2, test_fraction=0.2, group_column="lesion_id", seed=0)
    inputs = StageInputs(
        spec=spec,
        index=index,
        data=decode_dataset(index, args.size),
        val_idx=val,
        targets=make_targets(index, spec, train),
        model_config=ModelConfig("unet", 16),
        device=torch.device("cpu"),
        precision=resolve(spec.train.precision, "cpu"),
    )
    dense = train_model(inputs, 0).model
    chosen = inputs.image_ids(inputs.train_idx)[: len(inputs.train_idx) // 10]
    loss_weights, sampling_weights = boost(inputs, chosen)
    runs = {
        "attended, from scratch": lambda: train_model(
            inputs, 0, loss_weights=loss_weights, sampling_weights=sampling_weights
        ),
        "attended, fine-tuned": lambda: train_model(
            inputs, 0, loss_weights=loss_weights, sampling_weights=sampling_weights, start=dense
        ),
        "one label-check fold": lambda: label_check.check_fold(inputs, 0),
    }
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():  # interleaved, so drift on a shared machine touches every kind alike
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    base = min(times["attended, from scratch"])
    print(
        f"{len(train)} training images at {args.size} px, {args.epochs} epochs (fine-tune: {spec.attention.finetune_epochs}), "
        f"torch threads {torch.get_num_threads()}; best of {args.repeats}"
    )
    print("| model | seconds | of a from-scratch attended model |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.1f} | {min(values) / base:.2f} |")


if __name__ == "__main__":
    main()
