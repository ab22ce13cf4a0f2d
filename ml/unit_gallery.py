"""The HTL gallery the score unit leaves: the masks the first seed's dense reference and pruned
models predicted for every HTL image, every flagged one and a seeded sample of the others, as PNGs
the web app overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ml.job_context import JobContext
from ml.png import write_mask_png
from ml.run_folder import write_json

GALLERY_SAMPLE = 50  # images outside the HTL set whose predicted masks are kept too, for comparison


def gallery_masks(job: JobContext) -> np.ndarray:
    """Room for every training image's binarized prediction by the first seed's dense reference and
    pruned models, bit-packed in a memory map (images x models x pixels / 8), which scoring fills."""
    path = job.out / "cache" / "gallery-masks.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (len(job.train_idx), 1 + len(job.spec.prune.sparsities), -(-(job.spec.image_size**2) // 8))
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)


def _shown(job: JobContext, is_htl: np.ndarray, flagged: set[str]) -> tuple[list[int], int, int]:
    """Positions (in train_idx) of the images the gallery shows, how many of them are the sample,
    and how many are flagged by the label check."""
    others = np.flatnonzero(~is_htl)
    sample = np.random.default_rng(job.spec.split.seed).choice(others, min(GALLERY_SAMPLE, len(others)), replace=False)
    flagged_positions = [j for j, i in enumerate(job.train_idx) if job.image_id(i) in flagged]
    positions = sorted({*np.flatnonzero(is_htl).tolist(), *map(int, sample), *flagged_positions})
    return positions, len(sample), len(flagged_positions)


def write_gallery(
    job: JobContext, is_htl: np.ndarray, masks: np.ndarray, *, flagged: set[str], oos: dict[int, np.ndarray]
) -> None:
    """gallery/<layer>/<image_id>.png for each image shown (masks: from scoring; oos: the label
    check's out-of-sample predictions, packed, by dataset position); gallery.json lists them."""
    positions, n_sample, n_flagged = _shown(job, is_htl, flagged)
    layers = ["dense", *job.pruned_bases()]
    size = job.spec.image_size
    for layer in [*layers, *(["oos"] if oos else [])]:
        (job.out / "gallery" / layer).mkdir(parents=True, exist_ok=True)
    ids, oos_ids = [], []
    for j in positions:
        i = job.train_idx[j]
        image_id = job.image_id(i)
        unpacked = np.unpackbits(masks[j], axis=1, count=size * size).reshape(len(layers), size, size)
        for layer, mask in zip(layers, unpacked):
            write_mask_png(job.out / "gallery" / layer / f"{image_id}.png", mask)
        if i in oos:  # the label check's out-of-sample prediction, for images with a mask
            mask = np.unpackbits(oos[i], count=size * size).reshape(size, size)
            write_mask_png(job.out / "gallery" / "oos" / f"{image_id}.png", mask)
            oos_ids.append(image_id)
        ids.append(image_id)
    write_json(
        job.out / "gallery.json",
        {
            "seed": job.seeds[0],
            "image_size": size,
            "layers": [*layers, *(["oos"] if oos else [])],
            "images": ids,
            "oos_images": oos_ids,
            "htl": int(is_htl.sum()),
            "sample": n_sample,
            "label_issues": n_flagged,
        },
    )
    Path(masks.filename).unlink(missing_ok=True)  # the scoring pass's masks are not kept
