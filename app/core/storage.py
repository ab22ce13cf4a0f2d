"""The artifact store: files by key (relative POSIX paths, checked; nothing outside the store is ever
reached). Two implementations behind one interface:

- LocalStore: a directory (the embedded default). Readers use files in place.
- S3Store: S3-compatible object storage (HTL_STORAGE_URL=s3://bucket/prefix, HTL_S3_ENDPOINT_URL,
  credentials from the standard AWS variables), through boto3: the AWS SDK itself, maintained by
  AWS, with managed multipart transfers and retries, and spoken by every S3-compatible server.
  Readers get local copies from a bounded scratch cache (app.core.scratch.ScratchCache).

Nothing assumes the API and the workers share a filesystem: with S3 each process keeps its own
scratch folder."""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from app.core.scratch import ScratchCache, check_key

CHUNK = 1024 * 1024


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def files_under(folder: Path) -> dict[str, Path]:
    """Every regular file under folder by its relative POSIX path."""
    return {
        p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()
    }


class Store(ABC):
    """Files by key. `prefix` arguments name a folder-like key: every key under prefix + '/'."""

    def prepare(self) -> None:  # noqa: B027 - a hook: most stores need nothing
        """Whatever the store needs before the service's first request (nothing, by default)."""

    @abstractmethod
    def put_file(self, key: str, source: Path) -> tuple[str, int]:
        """Store a copy of source under key; answers (sha256, size)."""

    @abstractmethod
    def put_tree(self, prefix: str, folder: Path, *, move: bool = False, only: list[str] | None = None) -> None:
        """Every file under folder (or only those relative paths) under prefix/<relative path>;
        move=True may take the files (the folder is the caller's scratch)."""

    @abstractmethod
    def copy(self, source: str, target: str) -> None:
        """A copy of the file at key source under key target: its own bytes, so deleting either
        leaves the other whole."""

    def copy_tree(self, source: str, target: str, *, only: Callable[[str], bool]) -> int:
        """Copies each file under prefix source whose relative path `only` accepts to the same
        relative path under prefix target; answers how many."""
        chosen = [rel for rel in self.list(source) if only(rel)]
        for rel in chosen:
            self.copy(f"{source}/{rel}", f"{target}/{rel}")
        return len(chosen)

    @abstractmethod
    def iter_chunks(self, key: str, chunk: int = CHUNK) -> Iterator[bytes]: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> dict[str, int]:
        """Relative path -> size of every file under prefix."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """The key, and everything under it as a prefix."""

    @abstractmethod
    def local_file(self, key: str) -> Path | None:
        """A readable local file with the key's bytes (None when there is no such key)."""

    @abstractmethod
    def local_tree(self, prefix: str) -> Path:
        """A local folder holding every file under prefix (in place, or a synced scratch copy)."""

    @property
    def in_place(self) -> bool:
        """Whether local_tree answers the store's own folder (writes there are stored already)."""
        return False

    def trim_cache(self) -> builtins.list[Path]:  # builtins: `list` here is the method
        """Evicts what the local cache holds past its bound (a store read in place has none)."""
        return []

    def read_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))


class LocalStore(Store):
    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    @property
    def in_place(self) -> bool:
        return True

    def path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).parts)

    def put_file(self, key: str, source: Path) -> tuple[str, int]:
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

    def put_tree(self, prefix: str, folder: Path, *, move: bool = False, only: list[str] | None = None) -> None:
        target = self.path(prefix)
        if Path(folder).resolve() == target:
            return  # written in place
        if move and only is None and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder, target)  # one rename on the same filesystem
            return
        for rel, path in files_under(Path(folder)).items():
            if only is None or rel in only:
                self.put_file(f"{prefix}/{rel}", path)

    def copy(self, source: str, target: str) -> None:
        path = self.path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        shutil.copyfile(self.path(source), tmp)
        os.replace(tmp, path)

    def iter_chunks(self, key: str, chunk: int = CHUNK) -> Iterator[bytes]:
        with self.path(key).open("rb") as f:
            while data := f.read(chunk):
                yield data

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def list(self, prefix: str) -> dict[str, int]:
        folder = self.path(prefix)
        return {rel: p.stat().st_size for rel, p in files_under(folder).items()} if folder.is_dir() else {}

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def local_file(self, key: str) -> Path | None:
        path = self.path(key)
        return path if path.is_file() else None

    def local_tree(self, prefix: str) -> Path:
        path = self.path(prefix)
        path.mkdir(parents=True, exist_ok=True)
        return path


class S3Store(Store):
    def __init__(self, url: str, *, endpoint_url: str | None, scratch: ScratchCache, client=None):
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"HTL_STORAGE_URL must look like s3://bucket/prefix, not {url!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.scratch = scratch
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url or None,
                config=Config(retries={"max_attempts": 8, "mode": "standard"}, connect_timeout=5, read_timeout=60),
            )
        self.client = client

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def prepare(self) -> None:
        """Creates the bucket when it is missing (a server of one's own); an existing one is left as is."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            self.client.create_bucket(Bucket=self.bucket)

    def put_file(self, key: str, source: Path) -> tuple[str, int]:
        digest = sha256_of(source)
        self.client.upload_file(str(source), self.bucket, self._key(key), ExtraArgs={"Metadata": {"sha256": digest}})
        return digest, source.stat().st_size

    def put_tree(self, prefix: str, folder: Path, *, move: bool = False, only: list[str] | None = None) -> None:
        for rel, path in files_under(Path(folder)).items():
            if only is None or rel in only:
                self.put_file(f"{prefix}/{rel}", path)

    def copy(self, source: str, target: str) -> None:
        self.client.copy_object(
            Bucket=self.bucket, Key=self._key(target), CopySource={"Bucket": self.bucket, "Key": self._key(source)}
        )

    def iter_chunks(self, key: str, chunk: int = CHUNK) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        try:
            yield from body.iter_chunks(chunk)
        finally:
            body.close()

    def size(self, key: str) -> int:
        return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _objects(self, prefix: str) -> Iterator[dict]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix) + "/"
        )
        for page in pages:
            yield from page.get("Contents", [])

    def list(self, prefix: str) -> dict[str, int]:
        start = len(self._key(prefix)) + 1
        return {o["Key"][start:]: o["Size"] for o in self._objects(prefix)}

    def delete(self, key: str) -> None:
        keys = [o["Key"] for o in self._objects(key)] + [self._key(key)]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
            )

    def _download(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.partial")
        self.client.download_file(self.bucket, self._key(key), str(tmp))
        os.replace(tmp, target)

    def local_file(self, key: str) -> Path | None:
        target = self.scratch.path(key)
        if not target.is_file():
            if not self.exists(key):
                return None
            self._download(key, target)
        self.scratch.touch(key)
        return target

    def trim_cache(self) -> builtins.list[Path]:  # builtins: `list` here is the method
        return self.scratch.trim()

    def local_tree(self, prefix: str) -> Path:
        """Downloads what the scratch copy lacks (or holds at another size) under prefix."""
        folder = self.scratch.path(prefix)
        folder.mkdir(parents=True, exist_ok=True)
        for rel, size in self.list(prefix).items():
            target = folder.joinpath(*PurePosixPath(rel).parts)
            if not (target.is_file() and target.stat().st_size == size):
                self._download(f"{prefix}/{rel}", target)
        self.scratch.touch(prefix)
        return folder


def make_store(settings) -> Store:
    if settings.storage_url:
        store = S3Store(
            settings.storage_url,
            endpoint_url=settings.s3_endpoint_url,
            scratch=ScratchCache(settings.scratch, settings.scratch_max_bytes),
        )
        return store
    return LocalStore(settings.artifacts)
