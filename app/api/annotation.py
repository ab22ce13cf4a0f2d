"""The annotation queue of a semi-supervised job: its unlabeled training images, most worth
annotating first by a chosen strategy, as JSON pages or one CSV an annotation tool can load."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api import label_studio_export
from app.api.csv_export import csv_line
from app.api.deps import CurrentOwner, SessionDep
from app.api.lookup import succeeded_job
from app.api.schemas import AnnotationQueueItemOut, Page, error_responses
from app.core.errors import NotFound
from app.core.pagination import MAX_LIMIT, decode_cursor, encode_cursor
from app.db import queries
from app.services import jobs
from app.services.annotation_queue import Queued, Strategy, StrategyUnavailable, queue_order
from app.services.gallery import GalleryError, gallery_index

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(400, 401, 404, 409, 422, 429, 500, 503))
CSV_COLUMNS = ("position", "image_id", "strategy", "value", "rank", "htl_score", "image_url")


@router.get(
    "/{job_id}/annotation-queue",
    response_model=Page[AnnotationQueueItemOut],
    operation_id="job_annotation_queue",
    responses={
        200: {
            "description": "a page of the queue, or with `Accept: text/csv` all of it",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
def job_annotation_queue(
    job_id: uuid.UUID,
    request: Request,
    owner: CurrentOwner,
    session: SessionDep,
    strategy: Strategy = Query(
        "random",
        description="random (the default: a seeded shuffle, which beat both others on "
        "HAM10000, BENCHMARKS.md); htl: the HTL ranking; mc_dropout: test-time dropout disagreement "
        "(the job must have computed the mc_dropout scorer)",
    ),
    seed: int = Query(0, ge=0, le=2**31 - 1, description="the random strategy's seed"),
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
    format: str | None = label_studio_export.FORMAT,
    image_prefix: str | None = label_studio_export.IMAGE_PREFIX,
):
    """The unlabeled training images of a semi-supervised job (those without a mask), in the order
    a strategy would have them annotated. With `Accept: text/csv`, the whole queue as CSV; with
    `format=label-studio`, as Label Studio tasks (the dense model's mask as a prediction where the job
    kept it)."""
    job = succeeded_job(session, owner, job_id)
    setting = job.spec.get("setting", "supervised")
    if setting != "semi_supervised":
        raise NotFound(
            f"job {job_id} is {setting}: the annotation queue lists the unlabeled images of a semi_supervised job"
        )
    try:
        queue = queue_order(queries.unlabeled_scores(session=session, job_id=job_id), strategy, seed=seed)
    except StrategyUnavailable as e:
        raise NotFound(f"job {job_id} has no {strategy} queue: {e}") from e
    try:
        in_gallery = set(gallery_index(request.app.state.store, jobs.run_key(job_id))["images"])
    except GalleryError:
        in_gallery = set()
    items = [_item(job_id, strategy, q, q.image.image_id in in_gallery) for q in queue]
    if format == "label-studio":
        entries = [
            {
                "image_id": i.image_id,
                "split": "train",
                "data": {"position": i.position, "strategy": i.strategy, "value": i.value, "rank": i.rank},
            }
            for i in items
        ]
        return label_studio_export.tasks_response(request, session, job, entries, prefix=image_prefix, kind="queue")
    if "text/csv" in request.headers.get("accept", ""):
        return _csv_response(items, f"annotation-queue-{strategy}-{job_id}.csv")
    after = decode_cursor(cursor, keys=("position",))
    start = after["position"] if after else 0
    more = start + limit < len(items)
    return Page(
        items=items[start : start + limit], next_cursor=encode_cursor({"position": start + limit}) if more else None
    )


def _csv_response(items: list[AnnotationQueueItemOut], filename: str) -> Response:
    body = csv_line(CSV_COLUMNS) + "".join(
        csv_line([i.position, i.image_id, i.strategy, repr(i.value), i.rank, repr(i.htl_score), i.links["image"]])
        for i in items
    )
    return Response(body, media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _item(job_id: uuid.UUID, strategy: str, queued: Queued, in_gallery: bool) -> AnnotationQueueItemOut:
    image = queued.image
    base = f"/v1/jobs/{job_id}/images/{image.image_id}"
    links = {"detail": base, "image": f"{base}/overlay.png?layers="}
    if in_gallery:
        links["overlay"] = f"{base}/overlay.png?layers=dense"
    return AnnotationQueueItemOut(
        position=queued.position,
        image_id=image.image_id,
        strategy=strategy,
        value=queued.value,
        rank=image.rank,
        htl_score=image.htl_score,
        attributes=image.attributes,
        links=links,
    )
