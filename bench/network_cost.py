"""What each network costs per image against today's U-Net, and (with --data) what it gives: one dense
model per network trained on the same split, test Dice and hd95.

    .venv/bin/python bench/network_cost.py --size 96 --out bench/results/network-cost.json
    .venv/bin/python bench/network_cost.py --size 64 --data ../shared/data/ham10000 --images 1500 \\
        --epochs 6 --out bench/results/network-dice-ham10000.json

Cost: milliseconds per image of a training step (forward, backward, optimizer; batch 16) and of
inference (batch 64), the median of --repeats timed batches after a warm-up, in the precision auto
resolves to here; each network's ratio to the U-Net, measured in the same process, alternating. With
--data each network's result is written as it ends and a rerun skips the networks already there."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ml import precision
from ml.models import build_model
from ml.precision import autocast_for
from ml.train import prepare_for_device

NETWORKS = {
    "unet": {"arch": "unet"},
    "monai_unet": {"arch": "monai_unet"},
    "flexible_unet/resnet18": {"arch": "flexible_unet", "encoder": "resnet18"},
    "flexible_unet/resnet34": {"arch": "flexible_unet", "encoder": "resnet34"},
    "flexible_unet/efficientnet-b0": {"arch": "flexible_unet", "encoder": "efficientnet-b0"},
}


def _model(name: str, width: int, resolved: str) -> torch.nn.Module:
    cfg = NETWORKS[name]
    model = build_model(cfg["arch"], width, encoder=cfg.get("encoder"))
    return prepare_for_device(model, torch.device("cpu"), precision=resolved)


def _train_ms(model, size: int, repeats: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 3, size, size), (torch.rand(16, 1, size, size) > 0.5).float()
    times = []
    model.train()
    for k in range(repeats + 1):
        started = time.perf_counter()
        with autocast_for(model, torch.device("cpu")):
            out = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k:
            times.append((time.perf_counter() - started) * 1000 / 16)
    return float(np.median(times))


@torch.no_grad()
def _infer_ms(model, size: int, repeats: int) -> float:
    x = torch.randn(64, 3, size, size)
    model.eval()
    times = []
    for k in range(repeats + 1):
        started = time.perf_counter()
        with autocast_for(model, torch.device("cpu")):
            model(x)
        if k:
            times.append((time.perf_counter() - started) * 1000 / 64)
    return float(np.median(times))


def costs(size: int, width: int, repeats: int) -> dict:
    resolved = precision.resolve("auto", torch.device("cpu"))
    models = {name: _model(name, width, resolved) for name in NETWORKS}
    rows: dict[str, dict] = {name: {"train": [], "infer": []} for name in NETWORKS}
    for _ in range(repeats):  # alternating, so a noisy moment hits every network alike
        for name, model in models.items():
            rows[name]["train"].append(_train_ms(model, size, 1))
            rows[name]["infer"].append(_infer_ms(model, size, 1))
    out = {}
    for name, row in rows.items():
        train, infer = float(np.median(row["train"])), float(np.median(row["infer"]))
        out[name] = {
            "params": sum(p.numel() for p in models[name].parameters()),
            "train_ms_per_image": train,
            "infer_ms_per_image": infer,
        }
    for row in out.values():
        row["train_vs_unet"] = row["train_ms_per_image"] / out["unet"]["train_ms_per_image"]
        row["infer_vs_unet"] = row["infer_ms_per_image"] / out["unet"]["infer_ms_per_image"]
    return {"size": size, "width": width, "precision": resolved, "threads": torch.get_num_threads(), "networks": out}


def dice_on(data: Path, args, done: dict) -> dict:
    from contract.jobspec import JobSpec
    from ml.pipeline import Run

    for name, cfg in NETWORKS.items():
        if name in done:
            continue
        spec = JobSpec.model_validate(
            {
                "image_size": args.size,
                "model": {**cfg, "width": args.width},
                "sample": {"max_images": args.images, "seed": 0},
                "split": {"group_column": "lesion_id", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
                "train": {"epochs": args.epochs, "seeds": [0]},
                "prune": {"sparsities": [0.5]},
                "label_check": {"enabled": False},
                "attention": {"control": "none"},
            }
        )
        started = time.perf_counter()
        Run(data, spec, args.runs / name.replace("/", "-"), device="cpu").run()
        metrics = json.loads((args.runs / name.replace("/", "-") / "metrics.json").read_text())
        test = metrics["models"]["dense"]["test"]["overall"]
        done[name] = {
            "test_dice": test["dice"],
            "test_hd95": test.get("hd95"),
            "test_nsd": test.get("nsd"),
            "seconds": round(time.perf_counter() - started),
        }
        args.out.write_text(json.dumps({"dice": done}, indent=1))
        print(name, done[name], flush=True)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--runs", type=Path, default=Path("runs/network-cost"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.data is None:
        report = costs(args.size, args.width, args.repeats)
        args.out.write_text(json.dumps(report, indent=1))
        print(
            "| network | parameters | train ms/image | x U-Net | inference ms/image | x U-Net |\n|---|---|---|---|---|---|"
        )
        for name, r in report["networks"].items():
            print(
                f"| {name} | {r['params'] / 1e6:.2f} M | {r['train_ms_per_image']:.2f} | {r['train_vs_unet']:.2f} | "
                f"{r['infer_ms_per_image']:.2f} | {r['infer_vs_unet']:.2f} |"
            )
        return
    done = json.loads(args.out.read_text())["dice"] if args.out.is_file() else {}
    dice_on(args.data, args, done)


if __name__ == "__main__":
    main()
