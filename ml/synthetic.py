"""Generated dermoscopy-like datasets with a planted hard minority, for tests, demos and benchmarks.

Majority images: a dark, high-contrast lesion on noisy skin. Minority images (metadata
`site=rare`): a faint lesion whose colour is close to the skin's, which a model learns late and
which pruning disturbs first. `sex` is drawn independently of hardness. `dx` (mel or nv, an image
label for weakly-supervised runs) sets the lesion's tint.

Two more plantings, off unless asked for (and drawn from a generator of their own, so a dataset
without them is the same as before they existed):
- `rare_look_fraction`: lesions with a look the rest lack and a model can learn (metadata
  `look=pale`: lighter than the skin, where every other lesion is darker); a model that saw few of
  them misses them, one that attends to them learns them.
- `wrong_mask_fraction`: of the plain common images, masks that are wrong: the lesion's outline moved
  beside it (`beside`), or an outline far too loose (`loose`). The truth is in truth.csv beside
  metadata.csv (image_id, look, wrong_mask), which the pipeline never reads."""

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


def make_pale_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A lesion lighter than the skin (hypopigmented): the rare look."""
    mask = _lesion_mask(rng, size)
    skin = np.array([205, 160, 135]) + rng.normal(0, 8, 3)
    image = np.broadcast_to(skin, (size, size, 3)).copy()
    image[mask] = np.clip(skin + rng.uniform(30, 40), 0, 255)
    image += rng.normal(0, 10, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _neighbours(mask: np.ndarray) -> list[np.ndarray]:
    """The mask shifted one pixel up, down, left and right (outside the frame counts as background)."""
    p = np.pad(mask, 1)
    return [p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        out = out | np.logical_or.reduce(_neighbours(out))
    return out


def wrong_mask(rng: np.random.Generator, mask: np.ndarray, kind: str) -> np.ndarray:
    """beside: the outline moved off the lesion by its own extent (clipped to the frame);
    loose: the outline grown until it covers about four times the lesion."""
    size = mask.shape[0]
    if kind == "loose":
        grown = mask
        while grown.sum() < 4 * mask.sum() and grown.sum() < 0.9 * mask.size:
            grown = _dilate(grown, 1)
        return grown
    ys, xs = np.nonzero(mask)
    extent = np.array([ys.max() - ys.min() + 1, xs.max() - xs.min() + 1])
    centre = np.array([ys.mean(), xs.mean()])
    # away from the lesion, towards the side with more room
    direction = np.sign(size / 2 - centre) + (centre == size / 2)
    shift = (direction * extent * rng.uniform(0.9, 1.1, 2)).astype(int)
    shifted = np.zeros_like(mask)
    src = mask[max(0, -shift[0]) : size - max(0, shift[0]), max(0, -shift[1]) : size - max(0, shift[1])]
    shifted[max(0, shift[0]) : max(0, shift[0]) + src.shape[0], max(0, shift[1]) : max(0, shift[1]) + src.shape[1]] = (
        src
    )
    return shifted if shifted.any() else _dilate(mask, 3) & ~mask


def make_dataset(
    root: str | Path,
    *,
    n: int = 200,
    size: int = 64,
    hard_fraction: float = 0.15,
    seed: int = 0,
    rare_look_fraction: float = 0.0,
    wrong_mask_fraction: float = 0.0,
) -> Path:
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_hard = int(round(hard_fraction * n))
    hard_flags = np.zeros(n, dtype=bool)
    hard_flags[rng.choice(n, n_hard, replace=False)] = True
    diagnoses = np.random.default_rng(seed + 1000).choice(["mel", "nv"], n, p=[0.4, 0.6])
    planted = np.random.default_rng(seed + 2000)
    common = np.flatnonzero(~hard_flags)
    pale = (
        set(planted.choice(common, int(round(rare_look_fraction * n)), replace=False).tolist())
        if rare_look_fraction
        else set()
    )
    plain = np.array([i for i in common if i not in pale])
    wrong_ids = planted.choice(plain, int(round(wrong_mask_fraction * n)), replace=False) if wrong_mask_fraction else []
    wrong = {int(i): ("beside" if k % 2 == 0 else "loose") for k, i in enumerate(wrong_ids)}
    rows, truth = [], []
    for i in range(n):
        image_id = f"SYN_{i:05d}"
        if i in pale:
            image, mask = make_pale_image(planted, size)
        else:
            image, mask = make_image(rng, size, bool(hard_flags[i]), str(diagnoses[i]))
        if i in wrong:
            mask = wrong_mask(planted, mask, wrong[i])
        Image.fromarray(image).save(root / "images" / f"{image_id}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{image_id}_segmentation.png")
        truth.append({"image_id": image_id, "look": "pale" if i in pale else "plain", "wrong_mask": wrong.get(i, "")})
        rows.append(
            {
                "image_id": image_id,
                "lesion_id": f"LES_{i // 2:05d}",
                "site": "rare" if hard_flags[i] else "common",
                "sex": str(rng.choice(["female", "male"])),
                "age": str(int(rng.integers(5, 90))),
                "dx": str(diagnoses[i]),
                **({"look": "pale" if i in pale else "plain"} if rare_look_fraction else {}),
            }
        )
    _write_csv(root / "metadata.csv", rows)
    if rare_look_fraction or wrong_mask_fraction:
        _write_csv(root / "truth.csv", truth)
    return root


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# the triage studies' mix: faint lesions (site=rare), a rare learnable look (look=pale), wrong masks
TRIAGE_MIX = {"hard_fraction": 0.15, "rare_look_fraction": 0.06, "wrong_mask_fraction": 0.06}


def planted_dataset(root: str | Path, *, n: int, size: int, seed: int) -> Path:
    """The triage studies' generated data (TRIAGE_MIX), made once: a folder with its truth.csv is kept."""
    root = Path(root)
    if not (root / "truth.csv").is_file():
        make_dataset(root, n=n, size=size, seed=seed, **TRIAGE_MIX)
    return root


def read_truth(root: str | Path) -> dict[str, dict[str, str]]:
    """truth.csv by image id (what the generator planted, for reports only); empty for real data."""
    path = Path(root) / "truth.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["image_id"]: row for row in csv.DictReader(f)}
