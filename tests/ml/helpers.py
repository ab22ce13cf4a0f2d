from pathlib import Path

from ml.data import decode_dataset, scan_dataset
from ml.synthetic import make_dataset


def synthetic_decoded(
    tmp_path: Path, *, n: int = 64, size: int = 32, seed: int = 0, hard_fraction: float = 0.15
) -> tuple:
    root = make_dataset(tmp_path / f"syn-{n}-{size}-{seed}", n=n, size=size, seed=seed, hard_fraction=hard_fraction)
    index = scan_dataset(root)
    return index, decode_dataset(index, size)
