"""Generated dermoscopy-like datasets with a planted hard minority, for tests, demos and benchmarks.

Majority images: a dark, high-contrast lesion on noisy skin. Minority images (metadata
`site=rare`): a faint lesion whose colour is close to the skin's, which a model learns late and
which pruning disturbs first. `sex` is drawn independently of hardness. `dx` (mel or nv, an image
label for weakly-supervised runs) sets the lesion's tint."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def _lesion_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    ry, rx = rng.uniform(0.12, 0.28, 2) * size
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    wobble = 1 + 0.15 * np.sin(3 * np.arctan2(v, u) + rng.uniform(0, 2 * np.pi))
    return (u / rx) ** 2 + (v / ry) ** 2 <= wobble**2


# lesion colour per diagnosis: brown for nv, blue-grey for mel (what a classifier can learn from)
TINT = {"nv": np.array([1.0, 1.15, 1.2]), "mel": np.array([1.35, 1.1, 0.6])}


def make_image(rng: np.random.Generator, size: int, hard: bool, dx: str = "nv") -> tuple[np.ndarray, np.ndarray]:
    mask = _lesion_mask(rng, size)
    skin = np.array([205, 160, 135]) + rng.normal(0, 8, 3)
    image = np.broadcast_to(skin, (size, size, 3)).copy()
    contrast = rng.uniform(12, 22) if hard else rng.uniform(70, 110)
    lesion = skin - contrast * TINT[dx]
    image[mask] = lesion
    image += rng.normal(0, 14 if hard else 10, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_dataset(root: str | Path, *, n: int = 200, size: int = 64, hard_fraction: float = 0.15, seed: int = 0) -> Path:
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_hard = int(round(hard_fraction * n))
    hard_flags = np.zeros(n, dtype=bool)
    hard_flags[rng.choice(n, n_hard, replace=False)] = True
    diagnoses = np.random.default_rng(seed + 1000).choice(["mel", "nv"], n, p=[0.4, 0.6])
    rows = []
    for i in range(n):
        image_id = f"SYN_{i:05d}"
        image, mask = make_image(rng, size, bool(hard_flags[i]), str(diagnoses[i]))
        Image.fromarray(image).save(root / "images" / f"{image_id}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{image_id}_segmentation.png")
        rows.append({
            "image_id": image_id,
            "lesion_id": f"LES_{i // 2:05d}",
            "site": "rare" if hard_flags[i] else "common",
            "sex": str(rng.choice(["female", "male"])),
            "age": str(int(rng.integers(5, 90))),
            "dx": str(diagnoses[i]),
        })
    with (root / "metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root
