"""POST /v1/datasets (archive upload), GET /v1/datasets[/{id}]."""
from __future__ import annotations

import shutil
import uuid

from fastapi import APIRouter, Query, Request
from python_multipart.exceptions import MultipartParseError
from starlette.concurrency import run_in_threadpool

from app.api.deps import CurrentOwner, SessionDep, SettingsDep
from app.db import queries
from app.errors import InvalidInput, NotFound
from app.ingest import Limits, ingest_archive
from app.pagination import MAX_LIMIT, decode_cursor, encode_cursor
from app.schemas import DatasetOut, Page
from app.upload import receive_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
MAX_NAME = 200


@router.post("", status_code=201, response_model=DatasetOut)
async def upload_dataset(request: Request, owner: CurrentOwner, session: SessionDep, settings: SettingsDep) -> DatasetOut:
    """multipart/form-data: `file` = a zip or tar.gz of images/, masks/ and metadata.csv; optional `name`."""
    store = request.app.state.store
    work = settings.uploads / uuid.uuid4().hex
    work.mkdir(parents=True)
    dataset_id = uuid.uuid4()
    storage_key = f"datasets/{dataset_id}"
    adopted = False
    try:
        try:
            received = await receive_upload(request, work / "archive", file_field="file", max_bytes=settings.max_upload_bytes)
        except MultipartParseError as e:
            raise InvalidInput(f"the multipart body is malformed: {e}") from e
        name = (received.fields.get("name") or received.filename or "dataset").strip()
        if not name or len(name) > MAX_NAME:
            raise InvalidInput(f"name must be 1 to {MAX_NAME} characters")
        limits = Limits(
            max_files=settings.max_archive_files, max_uncompressed_bytes=settings.max_uncompressed_bytes,
            max_compression_ratio=settings.max_compression_ratio, max_image_pixels=settings.max_image_pixels,
        )
        result = await run_in_threadpool(ingest_archive, work / "archive", work / "unpacked", limits)
        store.adopt_dir(storage_key, work / "unpacked")
        adopted = True
        dataset = queries.create_dataset(
            session=session, dataset_id=dataset_id, owner_id=owner.id, name=name, storage_key=storage_key,
            size_bytes=result.size_bytes, columns=result.columns, warnings=result.warnings,
            images=(
                {"image_id": i.image_id, "has_mask": i.mask_filename is not None, "width": i.width,
                 "height": i.height, "attributes": i.attributes}
                for i in result.images
            ),
        )
        session.commit()
        adopted = False  # the rows now own the files
        return DatasetOut.model_validate(dataset)
    finally:
        if adopted:
            session.rollback()
            store.delete(storage_key)
        shutil.rmtree(work, ignore_errors=True)


@router.get("", response_model=Page[DatasetOut])
def list_datasets(owner: CurrentOwner, session: SessionDep, limit: int = Query(100, ge=1, le=MAX_LIMIT), cursor: str | None = None):
    rows, after = queries.list_datasets(
        session=session, owner_id=owner.id, limit=limit, after=decode_cursor(cursor, keys=("created_at", "id"))
    )
    return Page(items=[DatasetOut.model_validate(r) for r in rows], next_cursor=encode_cursor(after) if after else None)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: uuid.UUID, owner: CurrentOwner, session: SessionDep) -> DatasetOut:
    dataset = queries.get_dataset(session=session, owner_id=owner.id, dataset_id=dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return DatasetOut.model_validate(dataset)
