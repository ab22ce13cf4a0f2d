"""The units that train one model each: dense[seed], label_check[fold], attend[seed] and
control[seed]. Each saves its model and what its training recorded into the run folder, and does
nothing when that is there already (a resumed job)."""

from __future__ import annotations

import numpy as np

from ml import label_check, remedies
from ml.job_context import JobContext
from ml.run_folder import RunDirError, read_json, write_json, write_npz
from ml.stages import boost, train_model
from ml.train import BatchWeighting


def _train(
    job: JobContext,
    stage: str,
    base: str,
    seed: int,
    weights: tuple[np.ndarray | None, np.ndarray | None] | None = None,
    *,
    record_dynamics: bool = False,
    start_from: str | None = None,
    batch_weighting: BatchWeighting | None = None,
) -> dict:
    """Trains base's model of this seed (a fresh one, or fine-tunes start_from's model of the same
    seed); weights: its (loss_weights, sampling_weights). Answers what its training recorded."""
    name = job.name(base, seed)
    done = job.folder.trained_record(stage, name)
    if done.is_file():
        job.report(stage, 1.0, None)
        return read_json(done)
    loss_weights, sampling_weights = weights or (None, None)
    trained = train_model(
        job.inputs(),
        seed,
        loss_weights=loss_weights,
        sampling_weights=sampling_weights,
        record_dynamics=record_dynamics,
        start=None if start_from is None else job.load(job.name(start_from, seed)),
        progress=lambda f, loss: job.report(stage, f, loss),
        batch_weighting=batch_weighting,
    )
    job.save(trained.model, base, seed)
    if trained.dynamics is not None:
        np.savez(job.folder.state(f"dynamics-{name}.npz"), **trained.dynamics)
    record = {
        "epoch_losses": trained.epoch_losses,
        "precision": job.precision,
        **({"validation_dice": trained.validation_dice} if trained.validation_dice is not None else {}),
    }
    write_json(done, record)
    return record


def train_dense(job: JobContext, seed: int) -> None:
    job.stage = "dense"
    _train(job, "dense", "dense", seed, record_dynamics=True)


def check_fold(job: JobContext, fold: int) -> None:
    """Trains fold `fold`'s model and saves its out-of-sample check (unless saved already)."""
    job.stage = "label_check"
    path = job.folder.fold_file(fold)
    if path.is_file():
        job.report("label_check", 1.0, None)
        return
    checked = label_check.check_fold(job.inputs(), fold, progress=lambda f, loss: job.report("label_check", f, loss))
    q = checked.quality
    write_npz(
        path,
        indices=np.asarray(checked.indices, dtype=np.int64),
        quality=q.quality,
        contradicted=q.contradicted,
        oos_dice=q.oos_dice,
        predicted=checked.predicted,
    )


def train_attended(job: JobContext, base: str, seed: int) -> None:
    """The attended model (base 'attended') or its random control ('control') of this seed."""
    job.stage = "attend"
    job.folder.require("select")
    sets = job.attention()
    if base == "control" and sets.control is None:
        raise RunDirError("a control unit, but the spec asked for no control (attention.control)")
    strategy = job.spec.attention.strategy
    if sets.size == 0 and strategy != "topk_loss":  # topk_loss chooses in each batch, not ahead
        _dense_as(job, base, seed)
        return
    chosen = sets.attended if base == "attended" else sets.control[str(seed)]
    start_from = "dense" if job.spec.attention.mode == "fine_tune" else None
    weights = boost(job.inputs(), chosen, sets.weights_of(base, seed))
    weighting = _batch_weighting(job, sets, base, seed)
    _train(job, "attend", base, seed, weights, start_from=start_from, batch_weighting=weighting)


def _batch_weighting(job: JobContext, sets, base: str, seed: int) -> BatchWeighting | None:
    """topk_loss and group_dro weigh each batch as it comes (ml.remedies); the others weigh nothing online."""
    a = job.spec.attention
    if a.strategy == "topk_loss":
        return remedies.TopKLoss(a.topk_fraction, random=base == "control", seed=seed)
    if a.strategy == "group_dro":
        group_of = sets.group_of_model(base, seed) or {}
        return remedies.GroupDRO(
            np.array([group_of.get(image_id, 0) for image_id in job.inputs().image_ids(job.train_idx)])
        )
    return None


def _dense_as(job: JobContext, base: str, seed: int) -> None:
    """With nothing to attend (an empty HTL set) there is no attention to train: the attended
    (and control) model of the seed is its dense model, saved under that name."""
    done = job.folder.trained_record("attend", job.name(base, seed))
    if not done.is_file():
        job.save(job.load(job.name("dense", seed)), base, seed)
        write_json(done, {"epoch_losses": [], "note": "empty HTL set: the dense model, untrained further"})


def training_records(job: JobContext, stage: str, bases: list[str]) -> dict[str, dict]:
    """What training recorded for each of these models (every seed), in seed order."""
    return {
        job.name(base, seed): read_json(job.folder.trained_record(stage, job.name(base, seed)))
        for base in bases
        for seed in job.seeds
    }
