"""The artifact store: files by key under one root directory (a volume shared by API and workers).
Keys are relative POSIX paths; nothing outside the root is ever reached."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

CHUNK = 1024 * 1024


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or PurePosixPath(key).is_absolute() or any(p in ("..", ".", "") for p in parts):
            raise ValueError(f"bad artifact key {key!r}")
        return self.root.joinpath(*parts)

    def put_file(self, key: str, source: Path) -> tuple[str, int]:
        """Copy source under key; returns (sha256, size). Written to a temporary name, then renamed."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        h = hashlib.sha256()
        size = 0
        with source.open("rb") as src, tmp.open("wb") as dst:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                dst.write(chunk)
                size += len(chunk)
        os.replace(tmp, target)
        return h.hexdigest(), size

    def adopt_dir(self, key: str, source: Path) -> Path:
        """Move a finished folder (same filesystem) under key in one rename."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return target

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def iter_chunks(self, key: str, chunk: int = CHUNK) -> Iterator[bytes]:
        with self.open(key) as f:
            while data := f.read(chunk):
                yield data

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
