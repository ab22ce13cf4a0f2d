"""Reading a dataset directory, decoding it once into cached tensors, splitting and augmenting.

Layout: images/<id>.(jpg|jpeg|png), masks/<id>_segmentation.png or masks/<id>.png (optional),
metadata.csv (optional) with an image_id column. Masks are read by displayed grey level
(Pillow's convert("L")), never by palette index, and binarized at > 127.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from contract.layout import (
    IMAGE_SUFFIXES,
    MASK_THRESHOLD,
    METADATA_FILE,
    LayoutError,
    find_mask,
    read_mask,
    read_metadata,
)


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    image_path: Path
    mask_path: Path | None
    attributes: dict[str, str]


@dataclass
class DatasetIndex:
    root: Path
    records: list[ImageRecord]
    columns: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def n_masks(self) -> int:
        return sum(r.mask_path is not None for r in self.records)

    def ids(self) -> list[str]:
        return [r.image_id for r in self.records]


def scan_dataset(root: str | os.PathLike) -> DatasetIndex:
    root = Path(root)
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise LayoutError(f"{root} has no images/ folder")
    paths: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in paths:
            raise LayoutError(f"image id {path.stem!r} appears twice ({paths[path.stem].name}, {path.name})")
        paths[path.stem] = path
    if not paths:
        raise LayoutError(f"{image_dir} holds no .jpg/.jpeg/.png images")

    columns: list[str] = []
    metadata: dict[str, dict[str, str]] = {}
    warnings: list[str] = []
    if (root / METADATA_FILE).is_file():
        columns, metadata = read_metadata(root / METADATA_FILE)
        unknown = sorted(set(metadata) - set(paths))
        if unknown:
            warnings.append(f"metadata.csv names {len(unknown)} ids with no image; ignored (e.g. {unknown[0]})")
    mask_dir = root / "masks"
    records = [
        ImageRecord(
            image_id=image_id,
            image_path=path,
            mask_path=find_mask(mask_dir, image_id) if mask_dir.is_dir() else None,
            attributes=metadata.get(image_id, {}),
        )
        for image_id, path in paths.items()
    ]
    n_without = sum(r.mask_path is None for r in records)
    if n_without:
        warnings.append(f"{n_without} of {len(records)} images have no mask")
    return DatasetIndex(root=root, records=records, columns=columns, warnings=warnings)


def sample_records(index: DatasetIndex, max_images: int | None, seed: int) -> DatasetIndex:
    """The index restricted to a seeded random sample of max_images images (all when None or more)."""
    if max_images is None or max_images >= len(index.records):
        return index
    chosen = sorted(random.Random(seed).sample(range(len(index.records)), max_images))
    return DatasetIndex(index.root, [index.records[i] for i in chosen], index.columns, list(index.warnings))


def image_size_of(path: Path) -> tuple[int, int]:
    """(height, width) from the header, without decoding pixels."""
    with Image.open(path) as img:
        return img.height, img.width


def _decode_record(record: ImageRecord, size: int) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    with Image.open(record.image_path) as img:
        original = (img.height, img.width)
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the image is large
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    image = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    mask = None
    if record.mask_path is not None:
        binary = read_mask(record.mask_path)
        if binary.shape != original:
            raise LayoutError(
                f"mask of {record.image_id} is {binary.shape[1]}x{binary.shape[0]}, "
                f"its image {original[1]}x{original[0]}"
            )
        small = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
        mask = (np.asarray(small) > MASK_THRESHOLD).astype(np.uint8)[None]
    return image, mask, original


@dataclass
class DecodedDataset:
    """Every image decoded once, resized to size x size, as uint8 arrays (in memory or memory-mapped)."""

    image_ids: list[str]
    images: np.ndarray  # (N, 3, S, S) uint8
    masks: np.ndarray  # (N, 1, S, S) uint8 in {0, 1}; zeros where has_mask is False
    has_mask: np.ndarray  # (N,) bool
    original_sizes: list[tuple[int, int]]  # (height, width)

    def __len__(self) -> int:
        return len(self.image_ids)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices)
        return torch.from_numpy(np.ascontiguousarray(self.images[idx])), torch.from_numpy(
            np.ascontiguousarray(self.masks[idx])
        )


def _cache_key(index: DatasetIndex, size: int) -> str:
    h = hashlib.sha256(str(size).encode())
    for r in index.records:
        for p in (r.image_path, r.mask_path):
            if p is not None:
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


DECODE_CHUNK = 64


def decode_dataset(
    index: DatasetIndex,
    size: int,
    cache_dir: Path | None = None,
    workers: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> DecodedDataset:
    """Decode every image once. With cache_dir, the arrays are kept there as .npy files and reused
    (memory-mapped) by a later call on the same files and size. progress(fraction) is called after
    each chunk of images: the caller's chance to report, or to stop the work by raising."""
    key = _cache_key(index, size)
    if cache_dir is not None:
        manifest_path = cache_dir / f"decoded-{size}.json"
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("key") == key:
                return DecodedDataset(
                    image_ids=manifest["image_ids"],
                    images=np.load(cache_dir / f"images-{size}.npy", mmap_mode="r"),
                    masks=np.load(cache_dir / f"masks-{size}.npy", mmap_mode="r"),
                    has_mask=np.asarray(manifest["has_mask"], dtype=bool),
                    original_sizes=[tuple(s) for s in manifest["original_sizes"]],
                )
    n = len(index.records)
    images = np.zeros((n, 3, size, size), dtype=np.uint8)
    masks = np.zeros((n, 1, size, size), dtype=np.uint8)
    has_mask = np.zeros(n, dtype=bool)
    sizes: list[tuple[int, int]] = [(0, 0)] * n

    def work(i: int) -> None:
        image, mask, original = _decode_record(index.records[i], size)
        images[i] = image
        if mask is not None:
            masks[i] = mask
            has_mask[i] = True
        sizes[i] = original

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, n, DECODE_CHUNK):
            list(pool.map(work, range(start, min(n, start + DECODE_CHUNK))))
            if progress is not None:
                progress(min(n, start + DECODE_CHUNK) / n)
    decoded = DecodedDataset(index.ids(), images, masks, has_mask, sizes)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cache_dir / f"images-{size}.npy", images)
        np.save(cache_dir / f"masks-{size}.npy", masks)
        manifest = {"key": key, "image_ids": decoded.image_ids, "has_mask": has_mask.tolist(), "original_sizes": sizes}
        tmp = cache_dir / f"decoded-{size}.json.tmp"
        tmp.write_text(json.dumps(manifest))
        tmp.replace(cache_dir / f"decoded-{size}.json")
    return decoded


def split_indices(
    index: DatasetIndex,
    *,
    val_fraction: float,
    group_column: str | None,
    seed: int,
    test_fraction: float = 0.0,
) -> tuple[list[int], list[int], list[int]]:
    """Seeded train/validation/test split. With group_column, all images of one group land on one
    side; an image with an empty group value is a group of its own. Groups are shuffled and dealt to
    validation until it holds val_fraction of the images, then to test (test_fraction), so a split
    without a test set is the same as before test splits existed."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(index.records):
        value = record.attributes.get(group_column, "") if group_column else ""
        key = value if value else f"\0{record.image_id}"
        groups.setdefault(key, []).append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n = len(index.records)
    targets = [max(1, round(val_fraction * n)), round(test_fraction * n)]
    held: list[list[int]] = [[], []]
    side = 0
    for key in keys:
        while side < 2 and len(held[side]) >= targets[side]:
            side += 1
        if side == 2:
            break
        held[side].extend(groups[key])
    val, test = held
    taken = set(val) | set(test)
    train = [i for i in range(n) if i not in taken]
    if not train or not val or (test_fraction > 0 and not test):
        raise LayoutError(
            f"the split left {len(train)} training, {len(val)} validation and {len(test)} test images; "
            "change split.val_fraction / split.test_fraction or use more images"
        )
    return train, sorted(val), sorted(test)


MEAN = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
STD = torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1)


def to_model_input(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,H,W) to normalized float32."""
    x = images_u8.float().div_(255.0)
    return (x - MEAN.to(x.device)) / STD.to(x.device)


class PairedAugment:
    """Flips, a small rotation and colour jitter, drawn per sample and applied to the whole batch at
    once on the batch's device (one affine resampling, no per-image loop). Image and mask move
    together, both resampled nearest (as torchvision's RandomRotation does by default); corners
    rotated in are black. Parameters come from the global torch generator (training seeds it)."""

    def __init__(self, rotation: float = 15.0, colour: bool = True, jitter: float = 0.2):
        self.rotation = rotation
        self.jitter = jitter if colour else 0.0

    @staticmethod
    def _uniform(n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, channels, h, w = images.shape
        x_sign = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)  # a horizontal flip negates x
        y_sign = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
        angle = torch.deg2rad(self._uniform(n, -self.rotation, self.rotation))
        cos, sin = torch.cos(angle), torch.sin(angle)
        # output -> input sampling coordinates, in grid_sample's normalized units (a rotation by pixels
        # on a non-square image scales the cross terms by the aspect ratio)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = x_sign * cos, -x_sign * sin * h / w
        theta[:, 1, 0], theta[:, 1, 1] = y_sign * sin * w / h, y_sign * cos
        grid = F.affine_grid(theta.to(images.device), [n, channels + 1, h, w], align_corners=False)
        both = torch.cat([images, masks], 1).float()
        moved = F.grid_sample(both, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        out_images, out_masks = moved[:, :channels], moved[:, channels:]
        if self.jitter > 0:
            out_images = self._colour(out_images, n)
        return out_images.round_().clamp_(0, 255).to(torch.uint8), out_masks.to(masks.dtype)

    def _colour(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Brightness, contrast and saturation factors in [1 - jitter, 1 + jitter], as torchvision
        defines them (contrast blends with the mean grey level, saturation with the grey image)."""
        factors = self._uniform(3 * n, 1 - self.jitter, 1 + self.jitter).view(3, n, 1, 1, 1).to(x.device)
        x = (x * factors[0]).clamp_(0, 255)
        grey = lambda t: 0.299 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3]  # noqa: E731
        mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (factors[1] * x + (1 - factors[1]) * mean).clamp_(0, 255)
        return (factors[2] * x + (1 - factors[2]) * grey(x)).clamp_(0, 255)
