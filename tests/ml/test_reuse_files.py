"""contract.reuse's list of the files the dense, label-check and score units leave is complete and
only theirs: a run stopped after its score unit holds nothing else (but its identity and its cache),
no later unit writes or rewrites one of them, and a run of another attention that copies them
(`htl run --reuse-from`, or the service) ranks the same images the same way without training a dense model."""

from __future__ import annotations

import hashlib

import pytest

from contract.jobspec import JobSpec
from contract.reuse import REUSED_KINDS, is_shared_file
from contract.units import parse_unit
from ml import pipeline
from ml.pipeline import Run, RunDirError
from ml.synthetic import make_dataset

SPEC = {
    "image_size": 32,
    "model": {"width": 4},
    "split": {"test_fraction": 0.2},
    "train": {"epochs": 1, "batch_size": 8, "seeds": [0, 1]},
    "prune": {"sparsities": [0.5, 0.7]},
    "label_check": {"enabled": True, "folds": 2},
    "scorers": ["pruning", "el2n"],  # el2n: the dense units' training dynamics are shared too
    "attention": {"control": "random", "factor": 6},
}
IDENTITY = {"spec.json", "state/run.json"}


def _files(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and not p.relative_to(folder).as_posix().startswith("cache/")
    }


def test_the_shared_files_are_what_the_reused_units_write_and_nothing_later_touches_them(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", n=40, size=32, seed=4)
    spec = JobSpec.model_validate(SPEC)
    first = Run(data, spec, tmp_path / "first", device="cpu")
    first.run(until="score")
    after_score = _files(tmp_path / "first")
    assert sorted(f for f in after_score if not is_shared_file(f) and f not in IDENTITY) == []
    first.run()
    after_all = _files(tmp_path / "first")
    shared = {f: h for f, h in after_all.items() if is_shared_file(f)}
    assert shared == {f: h for f, h in after_score.items() if f not in IDENTITY}  # none added, none rewritten

    def refuse(*_a, **_k):
        raise AssertionError("a re-used unit ran")

    for kind in REUSED_KINDS:
        monkeypatch.setitem(pipeline.RUNNERS, kind, refuse)
    other = JobSpec.model_validate({**SPEC, "attention": {"control": "random", "factor": 2, "mode": "fine_tune"}})
    second = Run(data, other, tmp_path / "second", device="cpu")
    assert second.job.folder.reuse(tmp_path / "first") == len(shared)
    for unit in second.plan:  # what the workers run of a job that re-used the others
        if unit.kind not in REUSED_KINDS:
            second.run_unit(*parse_unit(unit.name))
    copied = _files(tmp_path / "second")
    assert {f: h for f, h in copied.items() if is_shared_file(f)} == shared
    assert copied["state/attention.json"] == after_all["state/attention.json"]  # same sets: factor and mode pick none

    another_dense = JobSpec.model_validate({**SPEC, "train": {**SPEC["train"], "epochs": 2}})
    with pytest.raises(RunDirError, match="more than attention"):
        Run(data, another_dense, tmp_path / "third", device="cpu").job.folder.reuse(tmp_path / "first")
