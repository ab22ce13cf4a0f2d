"""POST /v1/datasets (archive upload), GET /v1/datasets[/{id}]."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from python_multipart.exceptions import MultipartParseError
from starlette.concurrency import run_in_threadpool

from app.api.deps import CurrentOwner, SessionDep, SettingsDep, UploadOwner
from app.api.schemas import DatasetOut, Page, error_responses
from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.pagination import MAX_LIMIT, decode_cursor, encode_cursor
from app.db import queries
from app.services import jobs
from app.services.gallery import GalleryError, image_file
from app.services.image_files import Limits
from app.services.ingest import ingest_archive
from app.services.upload import receive_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=error_responses(400, 401, 422, 429, 500, 503))
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "zip or tar.gz of images/, masks/ and metadata.csv, an ISIC challenge "
                            "download, Kvasir-SEG, or a COCO JSON with its images",
                        },
                        "name": {"type": "string", "maxLength": 200, "description": "default: the archive's file name"},
                    },
                }
            }
        },
    }
}
MAX_NAME = 200


DATASET_LINKS = {
    op: {"operationId": op, "parameters": {"dataset_id": "$response.body#/id"}}
    for op in ("get_dataset", "delete_dataset")
}


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    openapi_extra=UPLOAD_BODY,
    operation_id="upload_dataset",
    responses={**error_responses(413, 415), 201: {"description": "the dataset", "links": DATASET_LINKS}},
)
async def upload_dataset(request: Request, owner: UploadOwner, settings: SettingsDep) -> DatasetOut:
    """multipart/form-data: `file` = a zip or tar.gz of images/, masks/ and metadata.csv, an ISIC challenge
    download, Kvasir-SEG, or a COCO JSON with its images (app.services.layouts); optional `name`.
    No database connection is held while the archive streams in and is checked: the rows are written
    in a short transaction at the end."""
    with request.app.state.upload_slots:
        return await _receive_dataset(request, owner, settings)


async def _receive_dataset(request: Request, owner, settings) -> DatasetOut:
    store = request.app.state.store
    work = settings.uploads / uuid.uuid4().hex
    work.mkdir(parents=True)
    dataset_id = uuid.uuid4()
    storage_key = jobs.dataset_key(dataset_id)
    adopted = False
    try:
        try:
            received = await receive_upload(
                request, work / "archive", file_field="file", max_bytes=settings.max_upload_bytes
            )
        except MultipartParseError as e:
            raise InvalidInput(f"the multipart body is malformed: {e}") from e
        name = (received.fields.get("name") or received.filename or "dataset").strip()
        if not name or len(name) > MAX_NAME:
            raise InvalidInput(f"name must be 1 to {MAX_NAME} characters")
        if "\x00" in name:
            raise InvalidInput("name holds a NUL character (U+0000)")
        limits = Limits(
            max_files=settings.max_archive_files,
            max_uncompressed_bytes=settings.max_uncompressed_bytes,
            max_compression_ratio=settings.max_compression_ratio,
            max_image_pixels=settings.max_image_pixels,
        )
        result = await run_in_threadpool(ingest_archive, work / "archive", work / "unpacked", limits)
        adopted = True  # from here a failure removes whatever reached the store
        await run_in_threadpool(store.put_tree, storage_key, work / "unpacked", move=True)
        dataset = await run_in_threadpool(
            _record_dataset, request.app.state.sessionmaker, dataset_id, owner.id, name, storage_key, result
        )
        adopted = False  # the rows now own the files
        return dataset
    finally:
        # (blocking work, like every query here, runs in a thread: the event loop serves the other requests)
        await run_in_threadpool(_clean_up, store if adopted else None, storage_key, work)


def _record_dataset(
    sessionmaker, dataset_id: uuid.UUID, owner_id: uuid.UUID, name: str, storage_key: str, result
) -> DatasetOut:
    """The dataset's rows, in one short transaction (nothing is written if it fails)."""
    with sessionmaker() as session:
        dataset = queries.create_dataset(
            session=session,
            dataset_id=dataset_id,
            owner_id=owner_id,
            name=name,
            storage_key=storage_key,
            size_bytes=result.size_bytes,
            columns=result.columns,
            warnings=result.warnings,
            layout=result.layout,
            images=(
                {
                    "image_id": i.image_id,
                    "has_mask": i.mask_filename is not None,
                    "width": i.width,
                    "height": i.height,
                    "attributes": i.attributes,
                }
                for i in result.images
            ),
        )
        session.commit()
        return DatasetOut.model_validate(dataset)


def _clean_up(store, storage_key: str, work: Path) -> None:
    if store is not None:
        store.delete(storage_key)
    shutil.rmtree(work, ignore_errors=True)


@router.get("", response_model=Page[DatasetOut], operation_id="list_datasets")
def list_datasets(
    owner: CurrentOwner, session: SessionDep, limit: int = Query(100, ge=1, le=MAX_LIMIT), cursor: str | None = None
):
    rows, after = queries.list_datasets(
        session=session, owner_id=owner.id, limit=limit, after=decode_cursor(cursor, keys=("created_at", "id"))
    )
    return Page(items=[DatasetOut.model_validate(r) for r in rows], next_cursor=encode_cursor(after) if after else None)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(404), operation_id="get_dataset")
def get_dataset(dataset_id: uuid.UUID, owner: CurrentOwner, session: SessionDep) -> DatasetOut:
    dataset = queries.get_dataset(session=session, owner_id=owner.id, dataset_id=dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return DatasetOut.model_validate(dataset)


@router.get(
    "/{dataset_id}/images/{image_id}",
    response_class=Response,
    responses={
        **error_responses(404),
        200: {
            "content": {
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "the image file as uploaded",
        },
    },
    operation_id="get_dataset_image",
)
def get_dataset_image(
    dataset_id: uuid.UUID, image_id: str, request: Request, owner: CurrentOwner, session: SessionDep
) -> Response:
    """One image of the dataset, the file as it was uploaded (what a Label Studio task's data.image
    points at: brush masks are drawn at this size)."""
    dataset = queries.get_dataset(session=session, owner_id=owner.id, dataset_id=dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    try:
        path = image_file(request.app.state.store, dataset.storage_key, image_id)
    except GalleryError as e:
        raise NotFound(f"dataset {dataset_id} has no image {image_id!r}") from e
    media = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return FileResponse(path, media_type=media)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(404, 409),
    operation_id="delete_dataset",
)
def delete_dataset(
    dataset_id: uuid.UUID, request: Request, owner: CurrentOwner, session: SessionDep, settings: SettingsDep
) -> Response:
    """The dataset, its images' rows and files, and its finished jobs with their results and files.
    409 while one of its jobs is queued or running (cancel it first)."""
    dataset = queries.get_dataset(session=session, owner_id=owner.id, dataset_id=dataset_id, lock=True)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    busy = queries.jobs_using_dataset(session=session, dataset_id=dataset_id)
    if busy:
        raise Conflict(
            f"dataset {dataset_id} is used by {len(busy)} unfinished job(s) ({', '.join(map(str, busy[:5]))}); "
            "cancel them or wait for them to finish"
        )
    storage_key = dataset.storage_key
    job_ids = queries.delete_dataset(session=session, dataset=dataset)
    session.commit()
    store = request.app.state.store  # rows first: a crash between leaves files no row names, never rows without files
    jobs.delete_files(store, settings, job_ids)
    store.delete(storage_key)
    return Response(status_code=204)
