"""Jobs: submit, list, get, cancel; and what a finished job produced: scores, metrics, checkpoints."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from app.api import label_studio_export
from app.api.csv_export import csv_line
from app.api.deps import INVALID_KEY, CurrentOwner, SessionDep, bearer_key, failed_authentication
from app.api.lookup import job_or_404, succeeded_job
from app.api.schemas import (
    CheckpointOut,
    EvaluationOut,
    JobCreate,
    JobOut,
    LabelIssueOut,
    MetricsOut,
    Page,
    ScoreOut,
    SubgroupsOut,
    error_responses,
)
from app.core.errors import NotFound
from app.core.pagination import MAX_LIMIT, decode_cursor, encode_cursor
from app.db import queries
from app.services import jobs
from contract.jobspec import JobSpec
from contract.status import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(400, 401, 404, 422, 429, 500, 503))


JOB_OPERATIONS = (
    "get_job",
    "cancel_job",
    "delete_job",
    "job_scores",
    "job_metrics",
    "job_subgroups",
    "job_checkpoints",
    "job_evaluations",
    "job_label_issues",
    "job_annotation_queue",
)
JOB_LINKS = {op: {"operationId": op, "parameters": {"job_id": "$response.body#/id"}} for op in JOB_OPERATIONS}


class JobSpecOut(BaseModel):
    defaults: dict = Field(description="the spec every field left out of a job takes")
    json_schema: dict = Field(
        alias="schema", description="the spec's JSON Schema (types, bounds, choices, descriptions)"
    )


spec_router = APIRouter(tags=["jobs"])


@spec_router.get("/v1/job-spec", response_model=JobSpecOut, response_model_by_alias=True, operation_id="job_spec")
def job_spec() -> dict:
    """The job spec's defaults and JSON Schema, for forms and clients (no key needed: it is public,
    like the OpenAPI document)."""
    return {"defaults": JobSpec().model_dump(mode="json"), "schema": JobSpec.model_json_schema()}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    operation_id="submit_job",
    responses={**error_responses(413), 202: {"description": "the queued job", "links": JOB_LINKS}},
)
def submit_job(body: JobCreate, request: Request, owner: CurrentOwner, session: SessionDep) -> JobOut:
    dataset = queries.get_dataset(session=session, owner_id=owner.id, dataset_id=body.dataset_id, lock=True)
    if dataset is None:
        raise NotFound(f"dataset {body.dataset_id} not found")
    state = request.app.state
    job = jobs.submit(
        session,
        owner_id=owner.id,
        dataset=dataset,
        spec=body.spec,
        settings=state.settings,
        celery=state.celery,
        store=state.store,
        reuse=body.reuse,
    )
    return JobOut.model_validate(job)


@router.get("", response_model=Page[JobOut], operation_id="list_jobs")
def list_jobs(
    owner: CurrentOwner,
    session: SessionDep,
    status: JobStatus | None = None,
    dataset_id: uuid.UUID | None = None,
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
):
    rows, after = queries.list_jobs(
        session=session,
        owner_id=owner.id,
        limit=limit,
        after=decode_cursor(cursor, keys=("created_at", "id")),
        status=status,
        dataset_id=dataset_id,
    )
    return Page(items=[JobOut.model_validate(r) for r in rows], next_cursor=encode_cursor(after) if after else None)


# the key is read in the route (no dependency to solve on the hottest path); the document still says
# the route takes the bearer key
@router.get(
    "/{job_id}", response_model=JobOut, operation_id="get_job", openapi_extra={"security": [{"HTTPBearer": []}]}
)
async def get_job(job_id: uuid.UUID, request: Request) -> Response:
    """The job's status, progress and units: what clients poll."""
    # the hottest route: one prepared query awaited on the event loop (app.db.status), no hop to a
    # worker thread, no ORM objects
    key = bearer_key(request)
    state = request.app.state
    owner_id, job = await state.status_reader.read(key=key, job_id=job_id)
    if owner_id is None:
        raise failed_authentication(request, INVALID_KEY)
    state.rate_limiter.check(str(owner_id))
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return Response(JobOut.model_validate(job).model_dump_json(), media_type="application/json")


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    responses=error_responses(409),
    operation_id="cancel_job",
)
def cancel_job(job_id: uuid.UUID, owner: CurrentOwner, session: SessionDep) -> JobOut:
    job = job_or_404(session, owner, job_id)
    jobs.cancel(session, job)
    return JobOut.model_validate(job)


CSV_PAGE = 2000


def _scores_csv(sessionmaker, job_id: uuid.UUID, htl_only: bool) -> Iterator[str]:
    """Every score as CSV, hardest first, read page by page in short sessions of its own (the
    request's session is closed while the body streams). Nested fields become columns:
    pruned@<sparsity>, score:<scorer>, attr:<metadata column>, group:<subgroup attribute>."""
    after, columns = None, None
    while True:
        with sessionmaker() as session:
            if columns is None:  # from every row's keys: a first row without metadata drops no column
                keys = queries.score_json_keys(session=session, job_id=job_id)
                columns = (
                    sorted(keys["per_sparsity"], key=float),
                    keys["other_scores"],
                    keys["attributes"],
                    keys["subgroups"],
                )
            rows = queries.list_scores(
                session=session, job_id=job_id, htl_only=htl_only, limit=CSV_PAGE, after_rank=after
            )
        rows = rows[:CSV_PAGE]
        if after is None:
            yield csv_line(
                [
                    "rank",
                    "image_id",
                    "htl_score",
                    "is_htl",
                    "labeled",
                    "label_quality",
                    "label_issue",
                    "attended",
                    *(f"pruned@{s}" for s in columns[0]),
                    *(f"score:{s}" for s in columns[1]),
                    *(f"attr:{a}" for a in columns[2]),
                    *(f"group:{a}" for a in columns[3]),
                ]
            )
        for r in rows:
            yield csv_line(
                [
                    r.rank,
                    r.image_id,
                    repr(r.htl_score),
                    r.is_htl,
                    r.labeled,
                    "" if r.label_quality is None else repr(r.label_quality),
                    "" if r.label_issue is None else r.label_issue,
                    r.attended,
                    *(repr(r.per_sparsity.get(s, "")) for s in columns[0]),
                    *("" if r.other_scores.get(s) is None else repr(r.other_scores[s]) for s in columns[1]),
                    *(r.attributes.get(a, "") for a in columns[2]),
                    *(r.subgroups.get(a, "") for a in columns[3]),
                ]
            )
        if len(rows) < CSV_PAGE:
            return
        after = rows[-1].rank


@router.get(
    "/{job_id}/scores",
    response_model=Page[ScoreOut],
    operation_id="job_scores",
    responses={
        **error_responses(409),
        200: {
            "description": "a page of scores, or with `Accept: text/csv` every score as CSV",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
    },
)
def job_scores(
    job_id: uuid.UUID,
    request: Request,
    owner: CurrentOwner,
    session: SessionDep,
    htl_only: bool = False,
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
):
    """Per training image, hardest first (rank 1). With `Accept: text/csv`, every score (or every HTL
    score) as one CSV stream; limit and cursor are then not used."""
    succeeded_job(session, owner, job_id)
    if "text/csv" in request.headers.get("accept", ""):
        return StreamingResponse(
            _scores_csv(request.app.state.sessionmaker, job_id, htl_only),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="scores-{job_id}.csv"'},
        )
    after = decode_cursor(cursor, keys=("rank",))
    rows = queries.score_rows(
        session=session,
        job_id=job_id,
        htl_only=htl_only,
        limit=limit,
        after_rank=None if after is None else after["rank"],
    )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor({"rank": rows[-1][0]}) if more else None
    # a page is up to 1,000 rows: written as JSON here, the stored JSON columns passed through as
    # their text, rather than parsed, validated as ScoreOut and serialized again
    body = f'{{"items":[{",".join(map(_score_json, rows))}],"next_cursor":{json.dumps(next_cursor)}}}'
    return Response(body, media_type="application/json")


def _number(x: float) -> str:
    return repr(float(x)) if math.isfinite(x) else "null"


def _score_json(row) -> str:
    """One ScoreOut as JSON from a queries.score_rows row."""
    (
        rank,
        image_id,
        htl_score,
        is_htl,
        labeled,
        label_quality,
        label_issue,
        attended,
        per_sparsity,
        scores,
        attributes,
        subgroups,
    ) = row
    return (
        f'{{"image_id":{json.dumps(image_id)},"htl_score":{_number(htl_score)},"is_htl":{_bool(is_htl)},'
        f'"rank":{int(rank)},"labeled":{_bool(labeled)},"per_sparsity":{per_sparsity},"scores":{scores},'
        f'"attributes":{attributes},"subgroups":{subgroups},'
        f'"label_quality":{"null" if label_quality is None else _number(label_quality)},'
        f'"label_issue":{"null" if label_issue is None else _bool(label_issue)},"attended":{_bool(attended)}}}'
    )


def _bool(value) -> str:
    return "true" if value else "false"


@router.get("/{job_id}/metrics", response_model=MetricsOut, responses=error_responses(409), operation_id="job_metrics")
def job_metrics(
    job_id: uuid.UUID,
    owner: CurrentOwner,
    session: SessionDep,
    split: Literal["validation", "test"] = Query(
        "validation", description="test: the held-out split (split.test_fraction > 0)"
    ),
) -> MetricsOut:
    """Per model (dense, pruned@S, attended, control): overall means and per attribute and subgroup,
    with counts, on one split; the comparisons over seeds; the pruning health report."""
    succeeded_job(session, owner, job_id)
    summary = queries.job_report(session=session, job_id=job_id, kind="summary") or {}
    splits = summary.get("splits", ["validation"])
    if split not in splits:
        raise NotFound(
            f"job {job_id} has no {split} split (it evaluated on: {', '.join(splits)}); set split.test_fraction"
        )
    models = _models_on(session, job_id, split)
    endpoint = _endpoint_on(summary, split)

    def on_split(key: str) -> dict | None:
        comparison = summary.get(key)
        if comparison is None:
            return None
        block = (
            comparison.get("test", {})
            if split == "test"
            else {k: v for k, v in comparison.items() if k not in ("test", "focus")}
        )
        return {**block, "focus": endpoint[key]} if endpoint.get(key) is not None else block

    return MetricsOut(
        job_id=job_id,
        split=split,
        splits=splits,
        group_column=summary.get("group_column"),
        seeds=summary.get("seeds", []),
        models=models,
        attended_vs_dense=on_split("attended_vs_dense") or {},
        attended_vs_control=on_split("attended_vs_control"),
        control_vs_dense=on_split("control_vs_dense"),
        scorer_agreement=summary.get("scorer_agreement", []),
        pruning=summary.get("pruning", {}),
        degenerate_sparsities=summary.get("degenerate_sparsities", []),
        validation_curve=summary.get("validation_curve", {}),
        precision=summary.get("precision"),
        recommended_model=summary.get("recommended_model"),
        focus=endpoint.get("focus"),
        worst_decile=endpoint.get("worst_decile"),
        verdict=endpoint.get("verdict"),
        label_check=summary.get("label_check", {}),
        blank_guesses=(summary.get("blank_guesses") or {}).get(split),
        warnings=summary.get("warnings", []),
    )


def _models_on(session, job_id: uuid.UUID, split: str) -> dict[str, dict]:
    """Per model, its overall metrics and its metrics per attribute and subgroup, with counts, on one split."""
    models: dict[str, dict] = {}
    for m in queries.job_metrics(session=session, job_id=job_id, split=split):
        entry = models.setdefault(m.model, {"n": 0, "overall": {}, "subgroups": {}})
        if m.attribute is None:
            entry["overall"][m.metric] = m.value
            entry["n"] = m.n
        else:
            group = entry["subgroups"].setdefault(m.attribute, {}).setdefault(m.subgroup, {"n": m.n})
            group[m.metric] = m.value
    return models


def _endpoint_on(summary: dict, split: str) -> dict:
    """The focus endpoint measured on `split`: the job's pre-registered one (on test when there is a
    test split) or, on validation beside a test split, the same endpoint there (where variants are
    chosen); {} for a split it was not measured on (a weakly supervised job, or an older one)."""
    if summary.get("focus", {}).get("split") == split:
        return {
            "focus": summary["focus"],
            "worst_decile": summary.get("worst_decile"),
            "verdict": summary.get("verdict"),
            **{key: (summary.get(key) or {}).get("focus") for key in ("attended_vs_dense", "attended_vs_control")},
        }
    return summary.get("validation_endpoint", {}) if split == "validation" else {}


@router.get(
    "/{job_id}/label-issues",
    response_model=Page[LabelIssueOut],
    operation_id="job_label_issues",
    responses={
        **error_responses(409),
        200: {
            "description": "a page of flagged images, worst first, or with `Accept: text/csv` all of them",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
    },
)
def job_label_issues(
    job_id: uuid.UUID,
    request: Request,
    owner: CurrentOwner,
    session: SessionDep,
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
    format: str | None = label_studio_export.FORMAT,
    image_prefix: str | None = label_studio_export.IMAGE_PREFIX,
):
    """The images whose mask the out-of-sample prediction contradicts (the label check), worst first:
    training images checked by the fold model that never saw them, held-out ones by the dense
    models. With `Accept: text/csv`, all of them as CSV; with `format=label-studio`, all of them as
    Label Studio tasks (the mask as an annotation, the out-of-sample prediction as a prediction scored
    by the label quality)."""
    job = succeeded_job(session, owner, job_id)
    summary = queries.job_report(session=session, job_id=job_id, kind="summary") or {}
    check = summary.get("label_check") or {}
    if not check.get("enabled"):
        raise NotFound(f"job {job_id} ran no label check ({check.get('reason', 'it predates the label check')})")
    scored = queries.label_issue_scores(session=session, job_id=job_id)
    items = [
        _label_issue(job_id, entry, scored.get(entry["image_id"]) if entry["split"] == "train" else None)
        for entry in check["issues"]
    ]
    if format == "label-studio":
        entries = [
            {
                "image_id": item.image_id,
                "split": item.split,
                "score": item.label_quality,
                "data": {
                    "label_quality": item.label_quality,
                    "contradicted": item.contradicted,
                    "oos_dice": item.oos_dice,
                    "rank": item.rank,
                },
            }
            for item in items
        ]
        return label_studio_export.tasks_response(
            request, session, job, entries, prefix=image_prefix, kind="label_issues"
        )
    if "text/csv" in request.headers.get("accept", ""):
        return Response(
            _label_issues_csv(items),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="label-issues-{job_id}.csv"'},
        )
    after = decode_cursor(cursor, keys=("position",))
    start = after["position"] if after else 0
    page = items[start : start + limit]
    more = start + limit < len(items)
    return Page(items=page, next_cursor=encode_cursor({"position": start + limit}) if more else None)


def _label_issue(job_id: uuid.UUID, entry: dict, score) -> LabelIssueOut:
    links = {}
    if score is not None:
        links = {
            "overlay": f"/v1/jobs/{job_id}/images/{entry['image_id']}/overlay.png?layers=gt,oos",
            "image": f"/v1/jobs/{job_id}/images/{entry['image_id']}",
        }
    return LabelIssueOut(
        image_id=entry["image_id"],
        split=entry["split"],
        label_quality=entry["quality"],
        contradicted=entry["contradicted"],
        oos_dice=entry["oos_dice"],
        rank=score.rank if score else None,
        is_htl=score.is_htl if score else None,
        attended=score.attended if score else None,
        attributes=score.attributes if score else {},
        links=links,
    )


def _label_issues_csv(items: list[LabelIssueOut]) -> str:
    attributes = sorted({a for item in items for a in item.attributes})
    lines = [
        csv_line(
            [
                "image_id",
                "split",
                "label_quality",
                "contradicted",
                "oos_dice",
                "rank",
                "is_htl",
                "attended",
                "overlay",
                *(f"attr:{a}" for a in attributes),
            ]
        )
    ]
    for item in items:
        lines.append(
            csv_line(
                [
                    item.image_id,
                    item.split,
                    repr(item.label_quality),
                    repr(item.contradicted),
                    repr(item.oos_dice),
                    "" if item.rank is None else item.rank,
                    "" if item.is_htl is None else item.is_htl,
                    "" if item.attended is None else item.attended,
                    item.links.get("overlay", ""),
                    *(item.attributes.get(a, "") for a in attributes),
                ]
            )
        )
    return "".join(lines)


@router.get(
    "/{job_id}/evaluations",
    response_model=Page[EvaluationOut],
    responses=error_responses(409),
    operation_id="job_evaluations",
)
def job_evaluations(
    job_id: uuid.UUID,
    owner: CurrentOwner,
    session: SessionDep,
    model: str = Query(
        "dense", max_length=60, description="dense, attended, control, pruned@0.5, ... (-s<seed> with several seeds)"
    ),
    split: Literal["validation", "test"] = "validation",
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
):
    """One model's metrics on each held-out image of a split, by image id."""
    succeeded_job(session, owner, job_id)
    after = decode_cursor(cursor, keys=("image_id",))
    rows = queries.list_evaluations(
        session=session,
        job_id=job_id,
        model=model,
        split=split,
        limit=limit,
        after_image=None if after is None else after["image_id"],
    )
    if not rows and after is None:
        known = sorted(queries.evaluated_models(session=session, job_id=job_id))
        raise NotFound(
            f"job {job_id} has no {split} evaluations of model {model!r} "
            f"(it has: {', '.join(f'{m} on {s}' for m, s in known[:20]) or 'none'})"
        )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [EvaluationOut(image_id=r.image_id, model=r.model, split=r.split, metrics=r.metrics) for r in rows]
    return Page(items=items, next_cursor=encode_cursor({"image_id": rows[-1].image_id}) if more else None)


@router.get(
    "/{job_id}/subgroups", response_model=SubgroupsOut, responses=error_responses(409), operation_id="job_subgroups"
)
def job_subgroups(job_id: uuid.UUID, owner: CurrentOwner, session: SessionDep) -> SubgroupsOut:
    """Which subgroups the HTL set over-represents (enrichment, interval, corrected p-value), and per
    validation subgroup whether attention closed the gap (dense vs attended Dice, bootstrap interval)."""
    succeeded_job(session, owner, job_id)
    body = queries.job_report(session=session, job_id=job_id, kind="subgroups")
    if body is None:
        raise NotFound(f"job {job_id} has no subgroup analysis")
    return SubgroupsOut(job_id=job_id, **body)


@router.get(
    "/{job_id}/checkpoints",
    response_model=Page[CheckpointOut],
    responses=error_responses(409),
    operation_id="job_checkpoints",
)
def job_checkpoints(
    job_id: uuid.UUID,
    owner: CurrentOwner,
    session: SessionDep,
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
):
    succeeded_job(session, owner, job_id)
    after = decode_cursor(cursor, keys=("name",))
    rows = queries.list_checkpoints(
        session=session, job_id=job_id, limit=limit, after_name=None if after is None else str(after["name"])
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[CheckpointOut.model_validate(r) for r in rows],
        next_cursor=encode_cursor({"name": rows[-1].name}) if more else None,
    )


@router.get(
    "/{job_id}/checkpoints/{name}",
    response_class=StreamingResponse,
    operation_id="download_checkpoint",
    responses={
        **error_responses(409),
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the safetensors file",
        },
        304: {"description": "not modified (If-None-Match)"},
    },
)
def download_checkpoint(job_id: uuid.UUID, name: str, request: Request, owner: CurrentOwner, session: SessionDep):
    """The safetensors file, streamed, with Content-Length, its sha256 in X-Checksum-SHA256 and as the ETag."""
    succeeded_job(session, owner, job_id)
    checkpoint = queries.get_checkpoint(session=session, job_id=job_id, name=name)
    if checkpoint is None:
        raise NotFound(f"job {job_id} has no checkpoint {name!r}")
    etag = f'"{checkpoint.sha256}"'
    headers = {"ETag": etag, "X-Checksum-SHA256": checkpoint.sha256, "Cache-Control": "private, max-age=0"}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    store = request.app.state.store
    headers["Content-Length"] = str(checkpoint.size_bytes)
    headers["Content-Disposition"] = f'attachment; filename="{checkpoint.name}.safetensors"'
    return StreamingResponse(
        store.iter_chunks(checkpoint.storage_key), media_type="application/octet-stream", headers=headers
    )


@router.delete(
    "/{job_id}", status_code=204, response_class=Response, responses=error_responses(409), operation_id="delete_job"
)
def delete_job(job_id: uuid.UUID, request: Request, owner: CurrentOwner, session: SessionDep) -> Response:
    """A finished job (succeeded, failed or cancelled) with its scores, metrics, reports, checkpoints
    and files. 409 while it is queued or running (cancel it first)."""
    job = job_or_404(session, owner, job_id)
    jobs.delete(session, job, store=request.app.state.store, settings=request.app.state.settings)
    return Response(status_code=204)
