"""Jobs side by side (a sweep's, or any of one dataset): the spec fields in which they differ, and
each job's headline: attended - dense and attended - control, overall and on the focus set, with
their 95% intervals, the worst-decile Dice and the verdict, all from the split the job reports on
(test when it has one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.db import queries
from app.db.models import Job

_MISSING = object()


def flatten(spec: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def differing_fields(specs: list[dict], first: Sequence[str] = ()) -> list[str]:
    """The dotted fields whose values are not the same in every spec: those named in `first` (a
    sweep's varied fields) in that order, then the others alphabetically (a stored spec's key order
    is the database's)."""
    flat = [flatten(s) for s in specs]
    names = {name for f in flat for name in f}
    differing = {n for n in names if len({repr(f.get(n, _MISSING)) for f in flat}) > 1}
    return [n for n in first if n in differing] + sorted(differing - set(first))


def _difference(summary: dict, key: str, split: str) -> dict | None:
    comparison = summary.get(key)
    if not comparison:
        return None
    block = comparison.get("test", {}) if split == "test" else comparison
    focus = comparison.get("focus") or {}
    return {
        "overall": (block.get("overall") or {}).get("dice"),
        "overall_ci95": (block.get("overall_ci95") or {}).get("dice"),
        "focus": focus.get("difference"),
        "focus_ci95": focus.get("ci95"),
    }


def headline(summary: dict | None) -> dict | None:
    """A finished job's comparison, in Dice; None before it has results."""
    if not summary:
        return None
    split = "test" if "test" in summary.get("splits", []) else "validation"
    worst = summary.get("worst_decile") or {}
    return {
        "split": split,
        "attended_vs_dense": _difference(summary, "attended_vs_dense", split),
        "attended_vs_control": _difference(summary, "attended_vs_control", split),
        "worst_decile": {model: v.get("all") for model, v in worst.items()},
        "verdict": summary.get("verdict"),
    }


def compare(session: Session, jobs: list[Job], first: Sequence[str] = ()) -> dict:
    fields = differing_fields([job.spec for job in jobs], first)
    rows = []
    for job in jobs:
        flat = flatten(job.spec)
        rows.append(
            {
                "job_id": job.id,
                "status": job.status,
                "progress": job.progress,
                "reused_from": job.reused_from,
                "values": {f: flat.get(f) for f in fields},
                "headline": headline(queries.job_report(session=session, job_id=job.id, kind="summary")),
            }
        )
    return {"fields": fields, "rows": rows}
