"""Sweeps: a base spec and the fields varied over it, run as one job per variant. The variants that
share their dense settings (contract.reuse) share one set of dense, label-check and score units:
the first of them (its lead) computes them, the others are submitted once it has (advance), each
copying them and running only its own select, attention, control and evaluation."""

from __future__ import annotations

import copy
import itertools
import math
import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import InvalidInput, Unavailable
from app.core.settings import Settings
from app.core.storage import Store
from app.db import queries
from app.db.models import Dataset, Job, Sweep, SweepVariant
from app.services import jobs
from contract.jobspec import JobSpec, SpecError
from contract.reuse import reuse_key
from contract.status import FINISHED

MAX_VARIANTS = 24
PENDING, SUBMITTED, SKIPPED = "pending", "submitted", "skipped"


def variants_of(vary: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the varied fields' values, the first field varying slowest."""
    for field, values in vary.items():
        if not isinstance(values, list) or not values:
            raise InvalidInput(f"vary.{field}: give a non-empty list of values")
    n = math.prod(len(values) for values in vary.values())
    if n > MAX_VARIANTS:  # counted before any is built: a few long lists multiply fast
        raise InvalidInput(f"vary: {n} variants; a sweep runs at most {MAX_VARIANTS}")
    return [dict(zip(vary, values)) for values in itertools.product(*vary.values())]


def with_overrides(base: dict, overrides: dict[str, Any]) -> dict:
    spec = copy.deepcopy(base)
    for field, value in overrides.items():
        *parents, leaf = field.split(".")
        node = spec
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InvalidInput(f"vary.{field}: {part} is not a section of the job spec")
            node = child
        node[leaf] = value
    return spec


def _admitted(
    base: dict, overrides: dict[str, Any], dataset: Dataset, settings: Settings
) -> tuple[JobSpec, JobSpec, list[str]]:
    """The variant's spec as given, and as admitted for the dataset with its warnings (jobs.admit);
    422 naming the variant."""
    try:
        spec = JobSpec.model_validate(with_overrides(base, overrides))
        resolved, warnings = jobs.admit(spec, dataset, settings)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise InvalidInput(f"variant {overrides}: spec {problems}") from e
    except SpecError as e:
        raise InvalidInput(f"variant {overrides}: spec.{e.field}: {e.message}") from e
    return spec, resolved, warnings


def create(
    session: Session,
    *,
    owner_id: uuid.UUID,
    dataset: Dataset,
    base: dict,
    vary: dict[str, list[Any]],
    name: str | None,
    reuse: bool,
    settings: Settings,
    celery,
    store: Store,
    select_rule: dict | None = None,
) -> Sweep:
    """Validates every variant first (one that does not fit: 422, nothing recorded), records the
    sweep, submits each variant that can start now (the first of its dense settings, or any whose
    dense units an earlier job of the owner computed) and leaves the others pending on that first."""
    combos = variants_of(vary)
    admitted = [_admitted(base, overrides, dataset, settings) for overrides in combos]
    sweep = Sweep(
        owner_id=owner_id,
        dataset_id=dataset.id,
        name=name,
        spec=base,
        vary=[{"field": f, "values": v} for f, v in vary.items()],
        select_rule=select_rule,
    )
    session.add(sweep)
    session.flush()
    submitted = _record_variants(session, sweep, combos, admitted, dataset=dataset, reuse=reuse, store=store)
    jobs.commit_or_forget(session, submitted, store)
    try:
        jobs.send(session, submitted, celery=celery, store=store)
    except Unavailable:
        session.delete(session.get(Sweep, sweep.id))
        session.commit()
        raise
    session.refresh(sweep)
    return sweep


def _record_variants(
    session: Session, sweep: Sweep, combos: list[dict], admitted: list, *, dataset: Dataset, reuse: bool, store: Store
) -> list[Job]:
    """A row per variant: the first of each dense setting submitted (its job recorded, files copied
    where it re-uses an earlier job), the others pending on it. Answers the submitted jobs; on error
    their copied files are deleted."""
    leads: dict[str, uuid.UUID] = {}  # reuse key -> the variant's job that computes those dense units
    submitted: list[Job] = []
    try:
        for position, (overrides, (spec, resolved, warnings)) in enumerate(zip(combos, admitted)):
            key = reuse_key(resolved.model_dump(mode="json"), str(dataset.id))
            variant = SweepVariant(
                sweep_id=sweep.id,
                position=position,
                overrides=overrides,
                spec=spec.model_dump(mode="json"),
                state=PENDING,
            )
            if reuse and key in leads:
                variant.lead_job_id = leads[key]
            else:
                job = _submit_variant(
                    session, sweep, variant, resolved, warnings, dataset=dataset, store=store, reuse=reuse
                )
                submitted.append(job)
                if job.reused_from is None:
                    leads[key] = job.id
            session.add(variant)
    except BaseException:
        for job in submitted:  # files copied for a job whose rows now roll back
            store.delete(jobs.job_key(job.id))
        raise
    return submitted


def _submit_variant(
    session: Session,
    sweep: Sweep,
    variant: SweepVariant,
    spec: JobSpec,
    warnings: list[str],
    *,
    dataset: Dataset,
    store: Store,
    reuse: bool = True,
) -> Job:
    """Records the variant's job (spec: as admitted by jobs.admit)."""
    job = jobs.record(
        session,
        owner_id=sweep.owner_id,
        dataset=dataset,
        spec=spec,
        warnings=warnings,
        store=store,
        reuse=reuse,
        sweep_id=sweep.id,
    )
    variant.job_id, variant.state, variant.lead_job_id = job.id, SUBMITTED, None
    return job


def advance(session: Session, *, settings: Settings, store: Store) -> list[Job]:
    """Submits each pending variant whose lead has its dense, label-check and score units done (it
    re-uses them), and skips those whose lead ended without them (error says why). Uncommitted;
    answers the jobs submitted, for the caller to send once committed. Any worker may call it: a
    variant is taken by one."""
    pending = session.scalars(
        select(SweepVariant)
        .where(SweepVariant.state == PENDING)
        .order_by(SweepVariant.sweep_id, SweepVariant.position)
        .with_for_update(skip_locked=True)
    ).all()
    submitted = []
    for variant in pending:
        lead = session.get(Job, variant.lead_job_id) if variant.lead_job_id else None
        if lead is None:
            variant.state, variant.error = SKIPPED, "not run: the job computing its dense models was deleted first"
        elif queries.reusable_units_done(session=session, job_id=lead.id):
            sweep = session.get_one(Sweep, variant.sweep_id)
            dataset = session.get_one(Dataset, sweep.dataset_id)
            spec, warnings = jobs.admit(JobSpec.model_validate(variant.spec), dataset, settings)
            submitted.append(_submit_variant(session, sweep, variant, spec, warnings, dataset=dataset, store=store))
        elif lead.status in FINISHED:
            variant.state = SKIPPED
            variant.error = (
                f"not run: job {lead.id}, which was to compute the dense models this variant shares, ended "
                f"{lead.status} before they were ready" + (f" ({lead.error})" if lead.error else "")
            )
    return submitted


def advance_and_send(sessionmaker, *, settings: Settings, store: Store, celery) -> list[uuid.UUID]:
    """advance in a transaction of its own, then the messages of what it submitted."""
    with sessionmaker() as session:
        submitted = advance(session, settings=settings, store=store)
        session.commit()
        if submitted:
            # committed already: a message the queue refuses now is sent again by the workers' sweep
            jobs.send(session, submitted, celery=celery, store=store, take_back=False)
        return [job.id for job in submitted]
