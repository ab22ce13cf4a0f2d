"""Sweeps: one job per combination of the varied fields, sharing their dense units; and jobs side by
side (a sweep's, or any of one dataset's)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Request

from app.api.deps import CurrentOwner, SessionDep
from app.api.schemas import ComparisonOut, Page, SweepCreate, SweepOut, SweepVariantOut, error_responses
from app.core.errors import NotFound
from app.core.pagination import MAX_LIMIT, decode_cursor, encode_cursor
from app.db import queries
from app.db.models import Sweep
from app.services import compare, selection, sweeps

router = APIRouter(tags=["sweeps"], responses=error_responses(400, 401, 404, 422, 429, 500, 503))
MAX_COMPARED = 100


def _out(session, sweep: Sweep, *, with_comparison: bool) -> SweepOut:
    variants = [
        SweepVariantOut(
            position=v.position,
            overrides=v.overrides,
            state=v.state,
            job_id=v.job_id,
            waits_for=v.lead_job_id,
            error=v.error,
        )
        for v in sweep.variants
    ]
    comparison = chosen = None
    if with_comparison:
        by_id = queries.jobs_by_id(session=session, job_ids=[v.job_id for v in sweep.variants if v.job_id])
        comparison = ComparisonOut.model_validate(
            compare.compare(
                session,
                [by_id[v.job_id] for v in sweep.variants if v.job_id in by_id],
                first=[entry["field"] for entry in sweep.vary],
            )
        )
        if sweep.select_rule:
            chosen = _selection(session, sweep, by_id)
    return SweepOut(
        id=sweep.id,
        dataset_id=sweep.dataset_id,
        name=sweep.name,
        spec=sweep.spec,
        vary=sweep.vary,
        created_at=sweep.created_at,
        variants=variants,
        comparison=comparison,
        select=sweep.select_rule,
        selection=chosen,
    )


def _selection(session, sweep: Sweep, by_id: dict) -> dict:
    """The variant chosen on validation by the sweep's rule (app.services.selection)."""
    assert sweep.select_rule is not None
    rows = []
    for v in sweep.variants:
        job = by_id.get(v.job_id) if v.job_id else None
        rows.append(
            {
                "job_id": None if job is None else job.id,
                "overrides": v.overrides,
                "state": v.state,
                "status": None if job is None else job.status,
                "summary": None if job is None else queries.job_report(session=session, job_id=job.id, kind="summary"),
            }
        )
    return selection.select(rows, sweep.select_rule["on"])


@router.post("/v1/sweeps", status_code=202, response_model=SweepOut, operation_id="create_sweep")
def create_sweep(body: SweepCreate, request: Request, owner: CurrentOwner, session: SessionDep) -> SweepOut:
    """One job per combination of `vary`'s values over the base spec. Variants that differ only in
    attention share one set of dense, label-check and score units: the first trains them, the
    others wait (pending) and then copy them."""
    dataset = queries.get_dataset(session=session, owner_id=owner.id, dataset_id=body.dataset_id, lock=True)
    if dataset is None:
        raise NotFound(f"dataset {body.dataset_id} not found")
    state = request.app.state
    sweep = sweeps.create(
        session,
        owner_id=owner.id,
        dataset=dataset,
        base=body.spec,
        vary=body.vary,
        name=body.name,
        reuse=body.reuse,
        select_rule=None if body.select is None else body.select.model_dump(),
        settings=state.settings,
        celery=state.celery,
        store=state.store,
    )
    return _out(session, sweep, with_comparison=True)


@router.get("/v1/sweeps", response_model=Page[SweepOut], operation_id="list_sweeps")
def list_sweeps(
    owner: CurrentOwner, session: SessionDep, limit: int = Query(100, ge=1, le=MAX_LIMIT), cursor: str | None = None
):
    rows, after = queries.list_sweeps(
        session=session, owner_id=owner.id, limit=limit, after=decode_cursor(cursor, keys=("created_at", "id"))
    )
    return Page(
        items=[_out(session, s, with_comparison=False) for s in rows],
        next_cursor=encode_cursor(after) if after else None,
    )


@router.get("/v1/sweeps/{sweep_id}", response_model=SweepOut, operation_id="get_sweep")
def get_sweep(sweep_id: uuid.UUID, owner: CurrentOwner, session: SessionDep) -> SweepOut:
    """The sweep's variants, each job's status, and its jobs side by side."""
    sweep = queries.get_sweep(session=session, owner_id=owner.id, sweep_id=sweep_id)
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} not found")
    return _out(session, sweep, with_comparison=True)


@router.get("/v1/datasets/{dataset_id}/comparison", response_model=ComparisonOut, operation_id="compare_jobs")
def compare_jobs(dataset_id: uuid.UUID, owner: CurrentOwner, session: SessionDep) -> ComparisonOut:
    """Every job of yours on this dataset (the newest 100) side by side."""
    if queries.get_dataset(session=session, owner_id=owner.id, dataset_id=dataset_id) is None:
        raise NotFound(f"dataset {dataset_id} not found")
    rows, _ = queries.list_jobs(
        session=session, owner_id=owner.id, limit=MAX_COMPARED, after=None, dataset_id=dataset_id
    )
    return ComparisonOut.model_validate(compare.compare(session, rows))
