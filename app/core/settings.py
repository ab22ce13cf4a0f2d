"""One Settings object, environment prefix HTL_. The defaults are the embedded deployment: SQLite,
artifacts and a filesystem broker under one data directory, no external server."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

HOST_MEMORY_SHARE = 0.75  # of the host's memory, what one job may be estimated to need by default


def host_memory_bytes() -> int | None:
    """This machine's physical memory, where the OS says (Linux, macOS); None elsewhere."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HTL_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(Path("htl-data"), description="embedded database, broker folders, artifacts, uploads")
    database_url: str | None = Field(None, description="default: SQLite in data_dir")
    broker_url: str | None = Field(None, description="default: a filesystem broker in data_dir")
    artifact_dir: Path | None = Field(None, description="default: data_dir/artifacts")
    storage_url: str | None = Field(
        None,
        description="s3://bucket/prefix: artifacts in S3-compatible object storage; "
        "default: the local folder artifact_dir",
    )
    s3_endpoint_url: str | None = Field(None, description="the S3 server (SeaweedFS, MinIO, ...); default: AWS")
    scratch_dir: Path | None = Field(
        None, description="local cache of stored files (object storage only); default: data_dir/scratch"
    )
    scratch_max_bytes: int = Field(
        50 * 1024**3, ge=0, description="the scratch cache evicts least recently used datasets and jobs past this"
    )

    # ingest limits: an archive is refused before anything is written past these
    max_upload_bytes: int = 4 * 1024**3
    max_archive_files: int = 100_000
    max_uncompressed_bytes: int = 16 * 1024**3
    max_compression_ratio: float = 200.0
    max_image_pixels: int = 50_000_000

    # database pool of each API process
    db_pool_size: int = Field(5, ge=1)
    db_max_overflow: int = Field(10, ge=0)
    db_pool_timeout_s: float = Field(
        10.0, gt=0, description="a request waits this long for a pooled connection, then answers 503"
    )

    # request limits
    max_json_bytes: int = Field(1024**2, ge=1024, description="largest JSON (non-upload) request body")
    rate_limit: int = Field(1200, ge=0, description="requests a minute per API key and API process; 0: no limit")
    failed_auth_limit: int = Field(
        60,
        ge=0,
        description="requests a minute with a missing or invalid key per client address "
        "and API process, past which they answer 429; 0: no limit",
    )
    metrics_token: str | None = Field(
        None,
        description="/metrics asks for 'Authorization: Bearer <token>'; unset, it answers "
        "only clients on this host (a Prometheus beside the API)",
    )
    max_concurrent_uploads: int = Field(4, ge=1, description="uploads streaming or ingesting at once; more answer 503")
    max_job_memory_bytes: int | None = Field(
        None,
        ge=1,
        description="a job estimated to need more memory is refused at submission, "
        f"and by a worker before it trains; default: {HOST_MEMORY_SHARE:.0%} of this host's memory",
    )
    worker_memory_bytes: int | None = Field(
        None,
        ge=1,
        description="what a worker may use before the out-of-memory killer "
        "strikes (a unit whose worker went silent above 80% of it is not retried); default: "
        "its cgroup's memory limit or the host's physical memory, whichever is less",
    )
    max_job_disk_bytes: int = Field(
        100 * 1024**3, description="a job estimated to need more disk is refused at submission"
    )
    abandoned_upload_after_s: float = Field(
        600, gt=0, description="at start, staging folders unchanged this long are removed"
    )

    # jobs
    job_visibility_timeout_s: int = 7 * 24 * 3600  # longer than any job, or Redis redelivers a running one
    job_stale_after_s: int = 300  # a running job silent this long belongs to a dead worker and may be reclaimed
    heartbeat_interval_s: float = Field(
        15.0, gt=0, description="a running job's worker stamps it this often, whatever the stage"
    )
    sweep_interval_s: float = Field(30.0, gt=0, description="each worker re-sends lost and orphaned jobs this often")
    max_attempts: int = Field(3, ge=1, description="a job whose worker is lost this many times fails")
    progress_interval_s: float = 0.5
    device: str | None = Field(None, description="cpu or cuda for workers; default: cuda when available")
    torch_threads: int | None = Field(
        None, ge=1, description="a worker's torch threads; default: the host's cores / its live workers"
    )

    @model_validator(mode="after")
    def _safe_outside_development(self) -> Settings:
        if self.environment == "production":
            if self.resolved_database_url.startswith("sqlite"):
                raise ValueError("HTL_DATABASE_URL must name a server database (PostgreSQL) in production")
            if self.resolved_broker_url.startswith("filesystem"):
                raise ValueError("HTL_BROKER_URL must name a broker server (Redis) in production")
        return self

    @property
    def job_memory_limit(self) -> int:
        """HTL_MAX_JOB_MEMORY_BYTES, or a share of this host's memory (24 GiB where it is unknown)."""
        if self.max_job_memory_bytes is not None:
            return self.max_job_memory_bytes
        total = host_memory_bytes()
        return int(HOST_MEMORY_SHARE * total) if total else 24 * 1024**3

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'htl.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def live_workers_since(self) -> datetime:
        """A worker stamps itself every sweep; one silent for three sweeps counts as gone."""
        return datetime.now(UTC) - timedelta(seconds=3 * self.sweep_interval_s)

    @property
    def artifacts(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @property
    def scratch(self) -> Path:
        return (self.scratch_dir or self.data_dir / "scratch").resolve()

    @property
    def uploads(self) -> Path:
        return (self.data_dir / "uploads").resolve()

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.artifacts, self.uploads):
            path.mkdir(parents=True, exist_ok=True)
        if self.resolved_broker_url.startswith("filesystem"):
            for sub in ("queue", "processed"):
                (self.broker_folder / sub).mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
