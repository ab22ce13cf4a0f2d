"""A bounded local cache of store files for one process (or several on a host: writes are atomic
renames). Entries are top-level keys' folders (a dataset, a job's run) or files; when the cache
outgrows its bound, the least recently used entries not used in the last `keep_s` seconds go first."""

from __future__ import annotations

import shutil
import time
from pathlib import Path, PurePosixPath

KEEP_S = 3600


def check_key(key: str) -> PurePosixPath:
    """A store key: a relative POSIX path that stays inside its root."""
    path = PurePosixPath(key)
    if not path.parts or path.is_absolute() or any(p in ("..", ".", "") for p in path.parts) or "\\" in key:
        raise ValueError(f"bad artifact key {key!r}")
    return path


class ScratchCache:
    def __init__(self, root: Path, max_bytes: int, *, keep_s: float = KEEP_S):
        self.root = Path(root).resolve()
        self.max_bytes = max_bytes
        self.keep_s = keep_s

    def path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).parts)

    def _entry(self, key: str) -> Path:
        """The unit of eviction: datasets/<id>, jobs/<id>, or the key itself."""
        parts = PurePosixPath(key).parts
        return self.root.joinpath(*parts[:2]) if len(parts) >= 2 else self.root.joinpath(*parts)

    def touch(self, key: str) -> None:
        entry = self._entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        (entry.parent / f".{entry.name}.used").touch()

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, folder) of every entry."""
        out = []
        for group in self.root.iterdir() if self.root.is_dir() else []:
            if not group.is_dir():
                continue
            for entry in group.iterdir():
                if entry.name.startswith("."):
                    continue
                stamp = group / f".{entry.name}.used"
                used = stamp.stat().st_mtime if stamp.exists() else entry.stat().st_mtime
                size = (
                    sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
                    if entry.is_dir()
                    else entry.stat().st_size
                )
                out.append((used, size, entry))
        return sorted(out)

    def trim(self) -> list[Path]:
        """Evicts least recently used entries until the cache fits its bound; answers what went."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        gone = []
        now = time.time()
        for used, size, entry in entries:
            if total <= self.max_bytes:
                break
            if now - used < self.keep_s:
                continue  # in use, or about to be: leave it
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            (entry.parent / f".{entry.name}.used").unlink(missing_ok=True)
            total -= size
            gone.append(entry)
        return gone
