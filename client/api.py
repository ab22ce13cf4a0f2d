"""A typed client for the htl-miner API (v1). Server and key come from arguments or from the
HTL_SERVER and HTL_API_KEY environment variables. Every error answer becomes an HtlError carrying
the API's status, code and detail."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from contract.status import FINISHED

DEFAULT_SERVER = "http://127.0.0.1:8000"
CHUNK = 1024 * 1024
# what the API answers: a JSON object (its fields are in the OpenAPI document at /openapi.json)
JsonObject = dict[str, Any]


class HtlError(Exception):
    """An error answer: status, the API's code (INVALID_INPUT, NOT_FOUND, ...) and its detail."""

    def __init__(self, status: int, code: str, detail: Any):
        self.status, self.code, self.detail = status, code, detail
        super().__init__(f"{status} {code}: {self._readable(detail)}")

    @staticmethod
    def _readable(detail: Any) -> str:
        if isinstance(detail, list):  # validation problems, each with the field it concerns
            return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
        return str(detail)


def pack_dataset(folder: Path, archive: Path) -> Path:
    """A tar.gz of a dataset folder's images/, masks/ and metadata.csv (nothing else)."""
    folder = Path(folder)
    if not (folder / "images").is_dir():
        raise ValueError(f"{folder} has no images/ folder")
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("images", "masks", "metadata.csv"):
            if (folder / name).exists():
                tar.add(folder / name, arcname=name)
    return archive


class _ProgressReader(io.RawIOBase):
    """A file read in chunks, reporting (bytes sent, total) as the upload goes."""

    def __init__(self, path: Path, on_progress: Callable[[int, int], None] | None):
        self._file = path.open("rb")
        self.total = path.stat().st_size
        self.sent = 0
        self.on_progress = on_progress

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(CHUNK if size is None or size < 0 else size)
        self.sent += len(data)
        if self.on_progress is not None:
            self.on_progress(self.sent, self.total)
        return data

    def close(self) -> None:
        self._file.close()
        super().close()


class HtlClient:
    def __init__(self, server: str | None = None, api_key: str | None = None, *, timeout: float = 60.0):
        self.server = (server or os.environ.get("HTL_SERVER") or DEFAULT_SERVER).rstrip("/")
        key = api_key or os.environ.get("HTL_API_KEY")
        if not key:
            raise ValueError("no API key: pass one or set HTL_API_KEY (create one with: htl keys create --owner NAME)")
        self._http = httpx.Client(base_url=self.server, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)

    def __enter__(self) -> HtlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- plumbing -------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        r = self._http.request(method, path, **kwargs)
        if r.status_code >= 400:
            try:
                body = r.json()
                raise HtlError(r.status_code, body.get("code", "ERROR"), body.get("detail", r.text))
            except ValueError:
                raise HtlError(r.status_code, "ERROR", r.text[:500]) from None
        return r

    @staticmethod
    def _object(r: httpx.Response) -> JsonObject:
        body = r.json()
        if not isinstance(body, dict):
            raise HtlError(r.status_code, "UNEXPECTED_ANSWER", f"expected a JSON object, got {type(body).__name__}")
        return body

    def _pages(self, path: str, params: JsonObject | None = None, limit: int = 1000) -> Iterator[JsonObject]:
        cursor = None
        while True:
            page = self._request(
                "GET", path, params={**(params or {}), "limit": limit, **({"cursor": cursor} if cursor else {})}
            ).json()
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    # --- datasets -------------------------------------------------------------------------------
    def upload_dataset(
        self, source: Path, *, name: str | None = None, on_progress: Callable[[int, int], None] | None = None
    ) -> JsonObject:
        """Upload a dataset folder (packed here as tar.gz) or an archive (zip or tar.gz)."""
        source = Path(source)
        with tempfile.TemporaryDirectory() as tmp:
            archive = pack_dataset(source, Path(tmp) / f"{source.name}.tar.gz") if source.is_dir() else source
            reader = _ProgressReader(archive, on_progress)
            try:
                files = {"file": (archive.name, reader, "application/octet-stream")}
                return self._object(
                    self._request(
                        "POST",
                        "/v1/datasets",
                        files=files,
                        data={"name": name or source.name},
                        timeout=httpx.Timeout(60.0, read=None, write=None),
                    )
                )
            finally:
                reader.close()

    def datasets(self) -> Iterator[JsonObject]:
        return self._pages("/v1/datasets")

    def dataset(self, dataset_id: str) -> JsonObject:
        return self._object(self._request("GET", f"/v1/datasets/{dataset_id}"))

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # --- jobs -----------------------------------------------------------------------------------
    def submit_job(self, dataset_id: str, spec: JsonObject | None = None, *, reuse: bool = True) -> JsonObject:
        body = {"dataset_id": dataset_id, "spec": spec or {}, "reuse": reuse}
        return self._object(self._request("POST", "/v1/jobs", json=body))

    def jobs(self, *, status: str | None = None, dataset_id: str | None = None) -> Iterator[JsonObject]:
        params = {k: v for k, v in (("status", status), ("dataset_id", dataset_id)) if v}
        return self._pages("/v1/jobs", params)

    def job(self, job_id: str) -> JsonObject:
        return self._object(self._request("GET", f"/v1/jobs/{job_id}"))

    def cancel_job(self, job_id: str) -> JsonObject:
        return self._object(self._request("POST", f"/v1/jobs/{job_id}/cancel"))

    def delete_job(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def wait(
        self,
        job_id: str,
        *,
        interval: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[JsonObject], None] | None = None,
    ) -> JsonObject:
        """Poll until the job has finished; answers its last state. A 503 or 429 on the way is waited out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                state = self.job(job_id)
            except HtlError as e:
                if e.status not in (429, 503):
                    raise
                state = None
            if state is not None:
                if on_update is not None:
                    on_update(state)
                if state["status"] in FINISHED:
                    return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
            time.sleep(interval)

    # --- sweeps ---------------------------------------------------------------------------------
    def create_sweep(
        self,
        dataset_id: str,
        vary: dict[str, list[Any]],
        spec: JsonObject | None = None,
        *,
        name: str | None = None,
        reuse: bool = True,
        select_on: str | None = None,
    ) -> JsonObject:
        """select_on ('focus' or 'overall'): choose a variant on validation once all have finished."""
        body: JsonObject = {"dataset_id": dataset_id, "spec": spec or {}, "vary": vary, "name": name, "reuse": reuse}
        if select_on is not None:
            body["select"] = {"split": "validation", "on": select_on}
        return self._object(self._request("POST", "/v1/sweeps", json=body))

    def sweep(self, sweep_id: str) -> JsonObject:
        return self._object(self._request("GET", f"/v1/sweeps/{sweep_id}"))

    def sweeps(self) -> Iterator[JsonObject]:
        return self._pages("/v1/sweeps")

    def comparison(self, dataset_id: str) -> JsonObject:
        return self._object(self._request("GET", f"/v1/datasets/{dataset_id}/comparison"))

    def wait_sweep(
        self, sweep_id: str, *, interval: float = 2.0, on_update: Callable[[JsonObject], None] | None = None
    ) -> JsonObject:
        """Poll until every variant has ended (its job finished, or skipped); answers the sweep."""
        while True:
            sweep = self.sweep(sweep_id)
            if on_update is not None:
                on_update(sweep)
            rows = {r["job_id"]: r for r in (sweep.get("comparison") or {}).get("rows", [])}
            open_variants = [
                v
                for v in sweep["variants"]
                if v["state"] == "pending" or (v["job_id"] in rows and rows[v["job_id"]]["status"] not in FINISHED)
            ]
            if not open_variants:
                return sweep
            time.sleep(interval)

    # --- results --------------------------------------------------------------------------------
    def scores(self, job_id: str, *, htl_only: bool = False) -> Iterator[JsonObject]:
        return self._pages(f"/v1/jobs/{job_id}/scores", {"htl_only": str(htl_only).lower()})

    def scores_csv(self, job_id: str, *, htl_only: bool = False) -> Iterator[bytes]:
        """Every score as CSV (a header, then one row per image, hardest first), streamed."""
        with self._http.stream(
            "GET",
            f"/v1/jobs/{job_id}/scores",
            params={"htl_only": str(htl_only).lower()},
            headers={"Accept": "text/csv"},
        ) as r:
            if r.status_code >= 400:
                r.read()
                self._request("GET", f"/v1/jobs/{job_id}/scores")  # raises the same error with its body
            yield from r.iter_bytes()

    def label_issues(self, job_id: str) -> Iterator[JsonObject]:
        return self._pages(f"/v1/jobs/{job_id}/label-issues")

    def annotation_queue(self, job_id: str, *, strategy: str = "random", seed: int = 0) -> Iterator[JsonObject]:
        """A semi-supervised job's unlabeled training images, most worth annotating first."""
        return self._pages(f"/v1/jobs/{job_id}/annotation-queue", {"strategy": strategy, "seed": seed})

    def annotation_queue_csv(self, job_id: str, *, strategy: str = "random", seed: int = 0) -> bytes:
        """The whole queue as CSV (position, image_id, strategy, value, rank, htl_score, image_url)."""
        return self._request(
            "GET",
            f"/v1/jobs/{job_id}/annotation-queue",
            params={"strategy": strategy, "seed": seed},
            headers={"Accept": "text/csv"},
        ).content

    def metrics(self, job_id: str, *, split: str = "validation") -> JsonObject:
        return self._object(self._request("GET", f"/v1/jobs/{job_id}/metrics", params={"split": split}))

    def subgroups(self, job_id: str) -> JsonObject:
        return self._object(self._request("GET", f"/v1/jobs/{job_id}/subgroups"))

    def checkpoints(self, job_id: str) -> list[JsonObject]:
        return list(self._pages(f"/v1/jobs/{job_id}/checkpoints"))

    def download_checkpoint(self, job_id: str, name: str, dest: Path) -> Path:
        """Stream a checkpoint to dest (a folder or a file name), checking the sha256 the API states."""
        dest = Path(dest)
        target = dest / f"{name}.safetensors" if dest.is_dir() else dest
        digest = hashlib.sha256()
        partial = target.with_name(target.name + ".part")
        with self._http.stream("GET", f"/v1/jobs/{job_id}/checkpoints/{name}") as r:
            if r.status_code >= 400:
                r.read()
                self._request("GET", f"/v1/jobs/{job_id}/checkpoints/{name}")
            expected = r.headers.get("x-checksum-sha256")
            with partial.open("wb") as out:
                for chunk in r.iter_bytes(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        if expected and digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            raise HtlError(
                502, "CHECKSUM_MISMATCH", f"downloaded {name}: sha256 {digest.hexdigest()} is not the stated {expected}"
            )
        partial.replace(target)
        return target
