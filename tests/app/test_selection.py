"""A sweep's selection from its variants' reports: made on validation (never test), after every
variant has finished, leaving out the ones that failed, and reported with the chosen one's test
figures."""

from app.services.selection import select


def _summary(val_focus, test_focus, *, val_overall=0.0, control=True, test=True) -> dict:
    key = "attended_vs_control" if control else "attended_vs_dense"
    comparison = {
        "overall": {"dice": val_overall},
        "overall_ci95": {"dice": [val_overall - 0.01, val_overall + 0.01]},
        "focus": {"difference": test_focus if test else val_focus, "ci95": [-0.1, 0.1], "p_one_sided": 0.2, "n": 40},
        **({"test": {"overall": {"dice": 0.005}, "overall_ci95": {"dice": [-0.01, 0.02]}}} if test else {}),
    }
    summary = {
        "splits": ["validation", "test"] if test else ["validation"],
        key: comparison,
        "verdict": "On the focus set...",
    }
    if test:
        summary["validation_endpoint"] = {key: {"difference": val_focus}}
    return summary


def _variant(i, summary, status="succeeded"):
    return {
        "job_id": f"job-{i}",
        "overrides": {"attention.factor": i},
        "state": "submitted",
        "status": status,
        "summary": summary,
    }


def test_the_choice_is_made_on_validation_and_reported_on_test():
    variants = [
        _variant(0, _summary(0.01, 0.30)),
        _variant(1, _summary(0.08, -0.20)),
        _variant(2, _summary(0.03, 0.10)),
    ]
    chosen = select(variants, "focus")
    assert chosen["job_id"] == "job-1"  # best on validation, worst on test
    assert chosen["value"] == 0.08 and chosen["compared"] == 3 and chosen["split"] == "validation"
    assert chosen["test"]["attended_vs_control"]["focus"]["difference"] == -0.20
    assert chosen["test"]["attended_vs_control"]["overall"]["difference"] == 0.005
    assert "among 3 variants" in chosen["sentence"] and "-0.2000" in chosen["sentence"]


def test_overall_reads_the_validation_overall_difference():
    variants = [_variant(0, _summary(0.5, 0.5, val_overall=0.01)), _variant(1, _summary(-0.5, -0.5, val_overall=0.02))]
    assert select(variants, "overall")["job_id"] == "job-1"


def test_it_waits_for_every_variant_and_leaves_out_the_failed():
    running = [_variant(0, _summary(0.05, 0.0)), _variant(1, None, status="running")]
    assert select(running, "focus")["job_id"] is None
    pending = [_variant(0, _summary(0.05, 0.0)), {**_variant(1, None, status=None), "job_id": None, "state": "pending"}]
    assert "Waiting for 1 of 2" in select(pending, "focus")["sentence"]
    failed = [_variant(0, _summary(0.05, 0.0)), _variant(1, None, status="failed")]
    chosen = select(failed, "focus")
    assert chosen["job_id"] == "job-0" and chosen["compared"] == 1 and "1 left out" in chosen["sentence"]


def test_without_a_control_attended_minus_dense_decides_and_the_sentence_says_so():
    variants = [_variant(0, _summary(0.02, 0.0, control=False)), _variant(1, _summary(0.01, 0.0, control=False))]
    chosen = select(variants, "focus")
    assert chosen["job_id"] == "job-0" and chosen["criterion"] == "attended_vs_dense"
    assert "no control trained" in chosen["sentence"]


def test_without_a_test_split_the_choice_says_it_is_not_reported_on_held_out_data():
    chosen = select([_variant(0, _summary(0.02, 0.02, test=False))], "focus")
    assert chosen["job_id"] == "job-0" and chosen["test"] is None
    assert "no test split" in chosen["sentence"]
