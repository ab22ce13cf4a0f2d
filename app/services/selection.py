"""A sweep's selection: the variant chosen on validation, then reported on test. The criterion is
attended - control (attended - dense where a variant trained no control) on the validation split,
on its focus set or over all its images; test is read only to report the chosen variant."""

from __future__ import annotations

from typing import Any

from contract.status import FINISHED, JobStatus

SELECT_ON = ("focus", "overall")


def _validation_endpoint(summary: dict) -> dict:
    """The focus endpoint measured on validation: metrics.json 'validation_endpoint' when the job has
    a test split, else the job's own endpoint (which is then on validation)."""
    if "test" in summary.get("splits", []):
        return summary.get("validation_endpoint") or {}
    return {key: (summary.get(key) or {}).get("focus") for key in ("attended_vs_control", "attended_vs_dense")}


def criterion(summary: dict) -> str:
    return "attended_vs_control" if summary.get("attended_vs_control") else "attended_vs_dense"


def validation_value(summary: dict, on: str) -> float | None:
    """What a variant is chosen by: its attended - control (or - dense) Dice on validation."""
    key = criterion(summary)
    if on == "focus":
        value = (_validation_endpoint(summary).get(key) or {}).get("difference")
    else:
        value = ((summary.get(key) or {}).get("overall") or {}).get("dice")
    return None if value is None else float(value)


def _on_test(summary: dict) -> dict | None:
    """The chosen variant on test: attended vs control and vs dense on the focus set and overall,
    with their 95% intervals, and the job's verdict; None without a test split."""
    if "test" not in summary.get("splits", []):
        return None
    out: dict[str, Any] = {"verdict": summary.get("verdict")}
    for key in ("attended_vs_control", "attended_vs_dense"):
        comparison = summary.get(key)
        if not comparison:
            out[key] = None
            continue
        focus = comparison.get("focus") or {}
        test = comparison.get("test") or {}
        out[key] = {
            "focus": {k: focus.get(k) for k in ("difference", "ci95", "p_one_sided", "n")},
            "overall": {
                "difference": (test.get("overall") or {}).get("dice"),
                "ci95": (test.get("overall_ci95") or {}).get("dice"),
            },
        }
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4f}"


def _interval(ci: list | None) -> str:
    return "" if not ci or ci[0] is None else f" [{ci[0]:+.4f}, {ci[1]:+.4f}]"


def select(variants: list[dict], on: str) -> dict:
    """variants: in sweep order, each {job_id, overrides, status, summary} (status None and job_id
    None for a variant never submitted; summary None before results). The choice waits until every
    variant has finished."""
    out: dict[str, Any] = {"split": "validation", "on": on, "job_id": None, "value": None, "test": None}
    waiting = [v for v in variants if v["status"] is not None and v["status"] not in FINISHED]
    pending = [v for v in variants if v["status"] is None and v.get("state") == "pending"]
    if waiting or pending:
        out["compared"] = 0
        out["sentence"] = (
            f"Waiting for {len(waiting) + len(pending)} of {len(variants)} variants to finish before choosing."
        )
        return out
    scored = [
        (value, -i, v)
        for i, v in enumerate(variants)
        if v["status"] == JobStatus.SUCCEEDED
        and v["summary"]
        and (value := validation_value(v["summary"], on)) is not None
    ]
    out["compared"] = len(scored)
    left_out = len(variants) - len(scored)
    why_out = f" ({left_out} left out: failed, skipped or without that comparison)" if left_out else ""
    if not scored:
        out["sentence"] = f"No variant could be compared on validation{why_out}: nothing was selected."
        return out
    value, _, chosen = max(scored, key=lambda t: (t[0], t[1]))
    summary = chosen["summary"]
    key = criterion(summary)
    out.update(job_id=chosen["job_id"], overrides=chosen["overrides"], value=value, criterion=key)
    out["test"] = _on_test(summary)
    what = "attended - control" if key == "attended_vs_control" else "attended - dense (no control trained)"
    where = "focus set" if on == "focus" else "images"
    sentence = (
        f"Chosen on validation among {len(scored)} variants{why_out}, by {what} Dice on the validation {where}: "
        f"{', '.join(f'{k}={v}' for k, v in chosen['overrides'].items())} at {value:+.4f}."
    )
    test = out["test"]
    if test is None:
        sentence += (
            " The variants have no test split (split.test_fraction), so the choice is not reported on held-out data."
        )
    else:
        vc = test.get("attended_vs_control") or test.get("attended_vs_dense") or {}
        label = "attended - control" if test.get("attended_vs_control") else "attended - dense"
        sentence += (
            f" On test, {label}: focus set {_fmt(vc['focus']['difference'])}{_interval(vc['focus']['ci95'])}, "
            f"all images {_fmt(vc['overall']['difference'])}{_interval(vc['overall']['ci95'])}."
        )
        if test.get("verdict"):
            sentence += f" Its verdict: {test['verdict']}"
    out["sentence"] = sentence
    return out
