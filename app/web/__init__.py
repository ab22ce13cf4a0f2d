"""The web app: one HTML shell per page URL, served by the API; the pages are ES modules under
static/ that call the v1 API with the API key the user typed (kept in the browser's session storage,
never in a URL). No build step, nothing from a CDN."""

from __future__ import annotations

import hashlib
from pathlib import Path
from string import Template

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).parent / "static"
SHELL = Template((Path(__file__).parent / "page.html").read_text(encoding="utf-8"))
# a fingerprint of the assets in their URLs: a new release is fetched at once, never a stale mix
VERSION = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(ASSETS.rglob("*")) if p.is_file())).hexdigest()[:12]
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


class Assets(StaticFiles):
    """Static files that browsers revalidate (ETag) before use, so modules never mix releases."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update({"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
        return response


def page(name: str, title: str) -> HTMLResponse:
    return HTMLResponse(SHELL.substitute(page=name, title=title, version=VERSION), headers=HEADERS)


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/jobs", status_code=307)


@router.get("/datasets")
def datasets_page() -> HTMLResponse:
    return page("datasets", "Datasets")


@router.get("/jobs")
def jobs_page() -> HTMLResponse:
    return page("jobs", "Jobs")


@router.get("/jobs/new")
def new_job_page() -> HTMLResponse:
    return page("new-job", "New job")


@router.get("/jobs/{job_id}")
def job_page(job_id: str) -> HTMLResponse:
    return page("job", "Job")


@router.get("/sweeps")
def sweeps_page() -> HTMLResponse:
    return page("compare", "Sweeps")


@router.get("/sweeps/{sweep_id}")
def sweep_page(sweep_id: str) -> HTMLResponse:
    return page("compare", "Sweep")


@router.get("/datasets/{dataset_id}/compare")
def compare_page(dataset_id: str) -> HTMLResponse:
    return page("compare", "Compare jobs")
