"""The guard around attention: which model a job recommends, read off validation only. An attended
model whose validation Dice falls below the dense model's by more than attention.guard_margin is
never offered as the result: the job recommends the dense model and says why, loudly."""

from __future__ import annotations

from collections.abc import Callable

ModelName = Callable[[str, int], str]  # (base, seed) -> the model's name


def _dice(models: dict, name: str) -> float | None:
    value = models.get(name, {}).get("overall", {}).get("dice")
    return None if value is None else float(value)


def _best_seed(models: dict, base: str, seeds: list[int], name: ModelName) -> str:
    """The checkpoint of this base with the best validation Dice (the first seed where none has one)."""
    scored = [(d, -i, name(base, s)) for i, s in enumerate(seeds) if (d := _dice(models, name(base, s))) is not None]
    return max(scored)[2] if scored else name(base, seeds[0])


def _reason(dense: float, attended: float, margin: float) -> str:
    drop = dense - attended
    said = f"the attended model's validation Dice ({attended:.4f})"
    if drop > margin:
        return (
            f"{said} is {drop:.4f} below the dense model's ({dense:.4f}), more than attention.guard_margin "
            f"{margin:g}: attention hurt this model, use the dense model"
        )
    if drop <= 0:
        return f"{said} is at or above the dense model's ({dense:.4f})"
    return f"{said} is {drop:.4f} below the dense model's ({dense:.4f}), within attention.guard_margin {margin:g}"


def recommend(models: dict, *, margin: float, seeds: list[int], name: ModelName) -> dict:
    """metrics.json 'recommended_model'. models: metrics.json 'models' (each model's validation
    report; with several seeds the plain base names hold the means over seeds)."""
    dense, attended = _dice(models, "dense"), _dice(models, "attended")
    out: dict = {"split": "validation", "margin": margin, "dense_dice": dense, "attended_dice": attended}
    if dense is None or attended is None:
        base = "dense"
        out["reason"] = (
            "no validation image has a mask, so the attended model could not be checked against the dense one: "
            "the dense model is the one to use"
        )
        out["attention_sank"] = None
    else:
        out["attention_sank"] = dense - attended > margin
        base = "dense" if out["attention_sank"] else "attended"
        out["reason"] = _reason(dense, attended, margin)
    out["model"] = base
    out["download"] = _best_seed(models, base, seeds, name)
    return out


def warning(recommended: dict) -> str | None:
    """The job's warning when attention sank its model (None otherwise)."""
    if not recommended.get("attention_sank"):
        return None
    return f"{recommended['reason']} (download checkpoint '{recommended['download']}')"


def with_guard(verdict: str | None, recommended: dict) -> str | None:
    """The verdict, followed by the guard's sentence when attention sank the model."""
    said = warning(recommended)
    if said is None:
        return verdict
    sentence = said[0].upper() + said[1:] + "."
    return sentence if verdict is None else f"{verdict} {sentence}"
