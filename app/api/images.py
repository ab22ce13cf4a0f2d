"""A training image of a finished job, for the HTL gallery: its scores and metadata, and overlays of
its ground truth and the dense and pruned models' masks, rendered here and cached."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api.deps import CurrentOwner, SessionDep
from app.api.lookup import succeeded_job
from app.api.schemas import ImageOut, error_responses
from app.core.errors import NotFound
from app.db import queries
from app.db.models import Dataset
from app.services import jobs
from app.services.gallery import (
    MAX_SIZE,
    GalleryError,
    gallery_index,
    image_layers,
    layer_colour,
    overlay_cache,
    render_overlay,
)

router = APIRouter(
    prefix="/v1/jobs/{job_id}/images", tags=["jobs"], responses=error_responses(400, 401, 404, 409, 422, 429, 500, 503)
)


def _image(session, owner, job_id: uuid.UUID, image_id: str):
    job = succeeded_job(session, owner, job_id)
    score = queries.get_score(session=session, job_id=job_id, image_id=image_id)
    if score is None:
        raise NotFound(f"job {job_id} scored no training image {image_id!r}")
    return job, score


@router.get("/{image_id}", response_model=ImageOut, operation_id="job_image")
def job_image(job_id: uuid.UUID, image_id: str, request: Request, owner: CurrentOwner, session: SessionDep) -> ImageOut:
    """One scored training image: rank, scores, metadata, which mask layers the gallery can draw."""
    _, score = _image(session, owner, job_id, image_id)
    try:
        index = gallery_index(request.app.state.store, jobs.run_key(job_id))
        layers = ["gt", *image_layers(index, image_id)]
    except GalleryError:
        layers = ["gt"]
    overlay = f"/v1/jobs/{job_id}/images/{image_id}/overlay.png?layers={','.join(layers)}"
    colours = {layer: "#{:02x}{:02x}{:02x}".format(*layer_colour(layer, layers)) for layer in layers}
    return ImageOut(
        image_id=image_id,
        rank=score.rank,
        htl_score=score.htl_score,
        is_htl=score.is_htl,
        labeled=score.labeled,
        per_sparsity=score.per_sparsity,
        scores=score.other_scores,
        attributes=score.attributes,
        subgroups=score.subgroups,
        label_quality=score.label_quality,
        label_issue=score.label_issue,
        attended=score.attended,
        layers=layers,
        layer_colours=colours,
        links={"overlay": overlay, "image": f"/v1/jobs/{job_id}/images/{image_id}/overlay.png?layers="},
    )


@router.get(
    "/{image_id}/overlay.png",
    operation_id="job_image_overlay",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the overlay",
        }
    },
)
def job_image_overlay(
    job_id: uuid.UUID,
    image_id: str,
    request: Request,
    owner: CurrentOwner,
    session: SessionDep,
    layers: str = Query(
        "gt,dense",
        max_length=500,
        description="comma-separated: gt, dense, pruned@<sparsity>, oos; empty: the image alone",
    ),
    size: int = Query(512, ge=32, le=MAX_SIZE, description="the long side, in pixels"),
) -> Response:
    """The image with the chosen layers drawn on it: gt as a green contour, dense as a blue tint with
    its contour, each pruned model as a contour of its own colour, oos (the label check's
    out-of-sample prediction) as a magenta contour. (A plain function: FastAPI runs it in a thread,
    so its queries and drawing never hold the event loop.)"""
    job, _ = _image(session, owner, job_id, image_id)
    dataset = session.get_one(Dataset, job.dataset_id)  # a job keeps its dataset (deleting it is 409)
    store = request.app.state.store
    chosen = [layer for layer in (part.strip() for part in layers.split(",")) if layer]
    cache = overlay_cache(request.app.state.settings, job_id)
    png = render_overlay(store, dataset.storage_key, jobs.run_key(job_id), image_id, chosen, size, cache)
    return Response(png, media_type="image/png")  # (rendered once and kept on the server: app.services.gallery)
