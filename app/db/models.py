"""Tables: owners and their API keys, datasets and their images, jobs and what a job produced
(per-image scores, metrics, checkpoints)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false, text, true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, CreatedAt, UUIDPrimaryKey
from contract.status import JobStatus

BigIntPK = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only


class Owner(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "owners"
    name: Mapped[str] = mapped_column(String(200), unique=True)


class ApiKey(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "api_keys"
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the key
    prefix: Mapped[str] = mapped_column(String(16))  # shown to tell keys apart; not enough to use one
    revoked_at: Mapped[datetime | None]


class Dataset(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner_created", "owner_id", "created_at"),)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    storage_key: Mapped[str] = mapped_column(String(400))
    n_images: Mapped[int]
    n_masks: Mapped[int]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    attributes: Mapped[list]
    warnings: Mapped[list]
    # the layout the upload came in (app.services.layouts.LAYOUTS); stored in the service's own
    layout: Mapped[str] = mapped_column(String(20), server_default="htl")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("dataset_id", "image_id"),)
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    image_id: Mapped[str] = mapped_column(String(200))
    has_mask: Mapped[bool]
    width: Mapped[int]
    height: Mapped[int]
    attributes: Mapped[dict]


class Job(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_jobs_owner_status_created", "owner_id", "status", "created_at"),
        Index("ix_jobs_dataset", "dataset_id"),
        Index("ix_jobs_reuse", "owner_id", "dataset_id", "reuse_key"),
    )
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    spec: Mapped[dict]
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    stage: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    worker: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]
    # what the user should know about how the job ran (resolved split column, degenerate sparsities)
    warnings: Mapped[list] = mapped_column(default=list, server_default=text("'[]'"))
    # contract.reuse: equal for jobs whose dense, label-check and score units compute the same files
    reuse_key: Mapped[str | None] = mapped_column(String(64))
    # the job whose outputs this one copied instead of computing them (no foreign key: it may be deleted since)
    reused_from: Mapped[uuid.UUID | None]
    sweep_id: Mapped[uuid.UUID | None] = mapped_column(index=True)  # the sweep it is a variant of
    units: Mapped[list[JobUnit]] = relationship(order_by="JobUnit.position", lazy="selectin", viewonly=True)


class Worker(Base):
    """A worker process, as it last said it was alive (its sweep thread stamps it)."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int]
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("job_id", "image_id"),
        Index("ix_scores_job_htl_rank", "job_id", "is_htl", "rank"),
    )
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[str] = mapped_column(String(200))
    htl_score: Mapped[float]
    is_htl: Mapped[bool]
    per_sparsity: Mapped[dict]
    other_scores: Mapped[dict]  # the other hardness scorers the spec asked for, by name
    labeled: Mapped[bool] = mapped_column(server_default=true())  # had the target its setting trains on
    attributes: Mapped[dict]
    subgroups: Mapped[dict] = mapped_column(server_default=text("'{}'"))  # attribute -> the label enrichment gave it
    label_quality: Mapped[float | None]  # the label check's; None: not checked (no mask, or the check was off)
    label_issue: Mapped[bool | None]
    attended: Mapped[bool] = mapped_column(server_default=false())  # in the set attention boosted


class JobUnit(Base):
    """One unit of a job's graph (contract.units): claimed, heartbeated and resumed on its own.
    waiting (for its deps) -> queued -> running -> succeeded | failed | cancelled."""

    __tablename__ = "job_units"
    __table_args__ = (Index("ix_job_units_status", "status"),)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int | None]
    position: Mapped[int]
    deps: Mapped[list]
    weight: Mapped[float]
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(default=0.0)
    attempt: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    queued_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # the attempt's peak resident memory as its heartbeat last reported it, and what its worker could
    # use (cgroup limit or physical memory): a silent worker near its limit was most likely OOM-killed
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    memory_limit_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # the job whose unit of this name this one copied, succeeded from the start (contract.reuse)
    reused_from: Mapped[uuid.UUID | None]


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job_model", "job_id", "model"),)
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(40))
    split: Mapped[str] = mapped_column(String(20))
    attribute: Mapped[str | None] = mapped_column(String(200))  # None: over all images of the split
    subgroup: Mapped[str | None] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(40))
    value: Mapped[float]
    n: Mapped[int]


class Evaluation(Base):
    """One model's metrics on one held-out image (validation or test)."""

    __tablename__ = "evaluations"
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(60), primary_key=True)
    split: Mapped[str] = mapped_column(String(20), primary_key=True)
    image_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    metrics: Mapped[dict]


class JobReport(Base):
    """A job's analysis documents, as JSON: 'subgroups' (enrichment, gap closing) and 'summary'
    (attended vs dense over seeds, scorer agreement, pruning reports)."""

    __tablename__ = "job_reports"
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    body: Mapped[dict]


class Checkpoint(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "name"),)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(60))
    storage_key: Mapped[str] = mapped_column(String(400))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    seed: Mapped[int | None]  # None: saved before seeds were recorded (0007)
    sparsity: Mapped[float | None]
    format: Mapped[str] = mapped_column(String(20), default="safetensors")


class Sweep(UUIDPrimaryKey, CreatedAt, Base):
    """A named set of jobs of one dataset: a base spec and the fields varied over it. The variants
    that share their dense settings share one set of dense units (contract.reuse)."""

    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_owner_created", "owner_id", "created_at"),)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict]  # the base spec, as given
    vary: Mapped[list]  # [{"field": "attention.factor", "values": [2, 3, 6]}, ...], in the order given
    select_rule: Mapped[dict | None]  # {"split": "validation", "on": "focus" | "overall"}, or none
    variants: Mapped[list[SweepVariant]] = relationship(
        order_by="SweepVariant.position", lazy="selectin", viewonly=True
    )


class SweepVariant(Base):
    """One job of a sweep: submitted at once (state submitted), or pending until its lead (the
    first variant of its dense settings) has its dense units done, or skipped (its lead ended
    without them: error says why)."""

    __tablename__ = "sweep_variants"
    sweep_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    overrides: Mapped[dict]  # field -> value, over the base spec
    spec: Mapped[dict]  # the variant's whole spec, as admitted
    state: Mapped[str] = mapped_column(String(16), index=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    lead_job_id: Mapped[uuid.UUID | None]  # while pending: the job whose dense units it waits for
    error: Mapped[str | None] = mapped_column(Text)
