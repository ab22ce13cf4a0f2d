"""What every `htl` program shares: reading a spec, the service's settings, torch's presence."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import ValidationError

from contract.jobspec import JobSpec


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "spec"
        lines.append(f"  {where}: {e['msg']}")
    return "invalid spec:\n" + "\n".join(lines)


def load_spec(path: str | None) -> JobSpec:
    if path is None:
        return JobSpec()
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"htl: cannot read spec {path}: {e}") from e
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        raise SystemExit("htl: " + format_validation_error(e)) from e


def settings_from(args: argparse.Namespace):
    import os

    if getattr(args, "data_dir_opt", None):
        os.environ["HTL_DATA_DIR"] = str(Path(args.data_dir_opt).resolve())
    from app.core.settings import get_settings

    get_settings.cache_clear()
    return get_settings()


def redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def require_torch(what: str) -> None:
    """The API-only install has no torch: say so, rather than start a worker that dies at import."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise SystemExit(
            f"htl: {what} needs torch, which this install lacks (the API-only install, "
            "requirements/api.txt): install requirements/runtime.txt for a worker, "
            "or run `htl serve --no-worker` with workers on another host"
        )


def version_string() -> str:
    from contract.reuse import code_version

    return code_version()


def data_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", dest="data_dir_opt", help="service data folder (default: $HTL_DATA_DIR or ./htl-data)")
