"""A job's units (contract.units) run into one output folder. A worker runs one unit at a time
(Run.run_unit); `htl run` runs every unit of the plan in order in one process (Run.run), through
the same functions. Each unit saves what it made, then a marker under OUT/state/, so a restarted
job resumes after the last finished unit; later units read models back from their checkpoint
files, so a resumed job computes exactly what an unbroken one does."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from contract.jobspec import JobSpec
from contract.results import ImageScore, JobResults, decode
from contract.units import UnitPlan, parse_unit, plan_units, unit_fraction, unit_name
from ml.job_context import JobContext
from ml.run_folder import RunDirError, read_json
from ml.stages import DegenerateError, sparsity_key
from ml.unit_evaluate import evaluation_of, run_evaluate_unit
from ml.unit_score import run_score_unit
from ml.unit_select import run_select_unit
from ml.unit_training import check_fold, train_attended, train_dense

__all__ = ["DegenerateError", "Progress", "Run", "RunDirError", "run_pipeline", "sparsity_key"]


@dataclass(frozen=True)
class Progress:
    unit: str
    stage: str  # the unit's internal stage (contract.units.UNIT_STAGES)
    stage_fraction: float
    unit_fraction: float
    overall: float  # the job's fraction when Run.run runs every unit; else the unit's
    loss: float | None = None


ProgressFn = Callable[[Progress], None]

RUNNERS: dict[str, Callable[[JobContext, int | None], None]] = {
    "dense": lambda job, seed: train_dense(job, seed),
    "label_check": lambda job, fold: check_fold(job, fold),
    "attend": lambda job, seed: train_attended(job, "attended", seed),
    "control": lambda job, seed: train_attended(job, "control", seed),
    "score": lambda job, _: run_score_unit(job),
    "select": lambda job, _: run_select_unit(job),
    "evaluate": lambda job, _: run_evaluate_unit(job),
}


class Run:
    """One job into one output folder."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        spec: JobSpec,
        out_dir: str | os.PathLike,
        *,
        device: str | None = None,
        progress: ProgressFn | None = None,
    ):
        self.job = JobContext(data_dir, spec, out_dir, device=device)
        self.plan = plan_units(self.job.spec)
        self.progress_fn = progress
        self._unit: UnitPlan = self.plan[0]
        self._done_before: float | None = None  # with Run.run: the weight of the units before this one
        self.job.report = self._report

    def _report(self, stage: str, fraction: float, loss: float | None) -> None:
        if self.progress_fn is None:
            return
        within = unit_fraction(self._unit.kind, stage, fraction)
        overall = within if self._done_before is None else min(1.0, self._done_before + self._unit.weight * within)
        self.progress_fn(Progress(self._unit.name, stage, fraction, within, overall, loss))

    def _planned(self, kind: str, seed: int | None) -> UnitPlan:
        by_name = {u.name: u for u in self.plan}
        name = unit_name(kind, seed)
        if name in by_name:
            return by_name[name]
        if kind not in RUNNERS:
            raise ValueError(f"no unit kind {kind!r}")
        if kind == "label_check":
            raise ValueError(f"fold {seed} is not one of this spec's label-check folds")
        raise ValueError(f"seed {seed} is not one of the spec's seeds {self.job.seeds}")

    def run_unit(self, kind: str, seed: int | None = None) -> JobResults | None:
        """One unit of the job graph: its inputs must be in the folder (a missing one raises rather
        than being recomputed). The evaluate unit answers the job's results."""
        self._unit = self._planned(kind, seed)
        RUNNERS[kind](self.job, seed)
        return self.results() if kind == "evaluate" else None

    def run(self, *, until: str | None = None) -> dict:
        """Every unit of the plan in order (until: through the last unit of that kind); answers
        metrics.json once the evaluate unit has run."""
        self._done_before = 0.0
        last = max((i for i, u in enumerate(self.plan) if u.kind == until), default=len(self.plan) - 1)
        for unit in self.plan[: last + 1]:
            self.run_unit(*parse_unit(unit.name))
            self._done_before += unit.weight
        return read_json(self.job.out / "metrics.json") if last == len(self.plan) - 1 else {}

    def results(self) -> JobResults:
        """What the finished job produced, typed: read back from the run folder, so a worker that
        resumes a job after another one evaluated it answers the same results."""
        evaluation = evaluation_of(self.job)
        return JobResults(
            scores=decode(list[ImageScore], read_json(self.job.out / "scores.json")),
            evaluation=evaluation,
            checkpoints=self.job.folder.checkpoint_files(self.job.model_names()),
        )


def run_pipeline(
    data_dir, spec: JobSpec, out_dir, *, device: str | None = None, progress: ProgressFn | None = None
) -> dict:
    return Run(data_dir, spec, out_dir, device=device, progress=progress).run()
