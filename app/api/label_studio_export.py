"""`?format=label-studio` on the label issues and the annotation queue: every item as a Label Studio
task (app.services.label_studio), with the masks read through the store (app.services.task_masks)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import Query, Request
from fastapi.responses import JSONResponse

from app.core.errors import InvalidInput
from app.db.models import Dataset, Job
from app.services import jobs, label_studio, task_masks
from contract.jobspec import JobSpec

FORMAT = Query(
    None,
    pattern="^label-studio$",
    description="label-studio: every item as a JSON list of Label Studio tasks (README, 'Label Studio')",
)
IMAGE_PREFIX = Query(
    None,
    max_length=500,
    description="with format=label-studio: data.image is this prefix followed by the image's file name (say "
    "'/data/local-files/?d=ham10000/images/' for images Label Studio serves itself); default: this API's "
    "GET /v1/datasets/{id}/images/{image_id}",
)


def _image_url(request: Request, dataset: Dataset, image_id: str, file_name: str, prefix: str | None) -> str:
    if prefix is not None:
        if any(ord(c) < 32 for c in prefix):
            raise InvalidInput("image_prefix holds a control character")
        return prefix + quote(file_name)
    return f"{str(request.base_url).rstrip('/')}/v1/datasets/{dataset.id}/images/{quote(image_id)}"


def _first_seed(job: Job) -> int:
    """The seed of the models the gallery and the predictions folder name first."""
    return JobSpec.model_validate(job.spec).train.seed_list()[0]


def tasks_response(
    request: Request, session, job: Job, entries: list[dict], *, prefix: str | None, kind: str
) -> JSONResponse:
    """entries: per image {image_id, split, data (what the task's data carries besides the image),
    score}; kind: 'label_issues' (the current mask as an annotation, the out-of-sample prediction
    as a prediction) or 'queue' (the dense model's mask, where the gallery kept it, as a prediction)."""
    store = request.app.state.store
    dataset = session.get_one(Dataset, job.dataset_id)
    run_key = jobs.run_key(job.id)
    seed = _first_seed(job)
    out = []
    for entry in entries:
        path, width, height = task_masks.image_size(store, dataset.storage_key, entry["image_id"])
        predicted = task_masks.predicted_mask(
            store,
            run_key,
            entry["image_id"],
            entry["split"],
            seed=seed,
            width=width,
            height=height,
            layer="oos" if kind == "label_issues" else "dense",
        )
        if kind == "label_issues":
            version = "htl-miner label check, out of sample" if entry["split"] == "train" else "htl-miner dense model"
        else:
            version = "htl-miner dense model"
        out.append(
            label_studio.task(
                _image_url(request, dataset, entry["image_id"], path.name, prefix),
                {"image_id": entry["image_id"], "split": entry["split"], **entry["data"]},
                mask=task_masks.current_mask(store, dataset.storage_key, entry["image_id"])
                if kind == "label_issues"
                else None,
                prediction=predicted,
                model_version=version,
                score=entry.get("score"),
            )
        )
    filename = f"{kind.replace('_', '-')}-{job.id}-label-studio.json"
    return JSONResponse(out, headers={"Content-Disposition": f'attachment; filename="{filename}"'})
