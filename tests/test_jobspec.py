import json

import pytest
from pydantic import ValidationError

from contract.jobspec import JobSpec, SpecError, check_spec_fits_dataset


def _error_fields(raw) -> list[str]:
    with pytest.raises(ValidationError) as e:
        JobSpec.model_validate(raw)
    return [".".join(str(p) for p in err["loc"]) for err in e.value.errors()]


def test_every_field_is_optional():
    spec = JobSpec.model_validate({})
    assert spec.model.arch == "unet" and spec.prune.sparsities == [0.3, 0.5, 0.7, 0.9]
    assert spec.htl.top_fraction == 0.1 and spec.htl.threshold is None


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"epochs": 3}, "epochs"),
        ({"train": {"epochs": 3, "momentum": 0.9}}, "train.momentum"),
        ({"prune": {"sparsities": [0.5, 1.0]}}, "prune.sparsities"),
        ({"prune": {"sparsities": [0.0]}}, "prune.sparsities"),
        ({"prune": {"sparsities": []}}, "prune.sparsities"),
        ({"model": {"arch": "vit"}}, "model.arch"),
        ({"image_size": 100}, "image_size"),
        ({"htl": {"top_fraction": 0.1, "threshold": 0.5}}, "htl"),
        ({"attention": {"strategy": "ignore"}}, "attention.strategy"),
    ],
)
def test_a_bad_spec_is_rejected_naming_the_field(raw, field):
    assert field in _error_fields(raw)


def test_sparsity_error_says_what_is_wrong():
    with pytest.raises(ValidationError, match=r"sparsity 1.0 is outside \(0, 1\)"):
        JobSpec.model_validate({"prune": {"sparsities": [0.5, 1.0]}})


def test_a_group_column_missing_from_the_metadata_is_rejected():
    spec = JobSpec.model_validate({"split": {"group_column": "lesion_id"}})
    with pytest.raises(SpecError) as e:
        check_spec_fits_dataset(spec, columns=["sex", "age"], n_images=10, n_masks=10)
    assert e.value.field == "split.group_column" and "lesion_id" in str(e.value)
    check_spec_fits_dataset(spec, columns=["lesion_id"], n_images=10, n_masks=10)


def test_unknown_attributes_and_missing_masks_are_rejected():
    with pytest.raises(SpecError, match="attributes: column 'site'"):
        check_spec_fits_dataset(JobSpec(attributes=["site"]), columns=["sex"], n_images=10, n_masks=10)
    with pytest.raises(SpecError, match="3 of 10 have none"):
        check_spec_fits_dataset(JobSpec(), columns=[], n_images=10, n_masks=7)


def test_semi_supervised_needs_images_without_masks_or_a_labeled_fraction():
    semi = JobSpec.model_validate({"setting": "semi_supervised"})
    with pytest.raises(SpecError) as e:
        check_spec_fits_dataset(semi, columns=[], n_images=10, n_masks=10)
    assert e.value.field == "semi.labeled_fraction"
    check_spec_fits_dataset(semi, columns=[], n_images=10, n_masks=4)
    check_spec_fits_dataset(
        JobSpec.model_validate({"setting": "semi_supervised", "semi": {"labeled_fraction": 0.2}}),
        columns=[],
        n_images=10,
        n_masks=10,
    )


def test_group_column_auto_picks_the_first_grouping_key_and_warns_without_one():
    from contract.jobspec import resolve_group_column

    spec = JobSpec.model_validate({})
    assert spec.split.group_column == "auto"
    chosen, warnings = resolve_group_column(spec, ["image_id", "dx", "Lesion_ID", "patient_id"])
    assert chosen.split.group_column == "Lesion_ID" and warnings == [] and spec.split.group_column == "auto"
    none, warnings = resolve_group_column(spec, ["image_id", "dx", "age"])
    assert none.split.group_column is None and len(warnings) == 1 and "auto" in warnings[0]
    explicit = JobSpec.model_validate({"split": {"group_column": None}})
    assert resolve_group_column(explicit, ["lesion_id"]) == (explicit, [])


def test_attention_scorer_must_be_computed_and_splits_must_leave_training_images():
    with pytest.raises(ValidationError, match="attention.scorer 'loss' is not computed"):
        JobSpec.model_validate({"attention": {"scorer": "loss"}})
    assert JobSpec.model_validate({"attention": {"scorer": "loss"}, "scorers": ["loss"]}).attention.scorer == "loss"
    with pytest.raises(ValidationError, match="leaves under 10%"):
        JobSpec.model_validate({"split": {"val_fraction": 0.5, "test_fraction": 0.4}})


def test_the_scorer_registry_is_what_the_spec_accepts_and_what_units_charge():
    from contract.scorers import MC_DROPOUT_SAMPLES, SCORERS
    from contract.units import plan_units

    schema = JobSpec.model_json_schema()["properties"]["scorers"]
    assert schema["items"]["enum"] == list(SCORERS)
    assert all(name in schema["description"] for name in SCORERS)

    def score_weight(scorers):
        units = plan_units(JobSpec.model_validate({"scorers": scorers}))
        return next(u.weight for u in units if u.kind == "score") / sum(u.weight for u in units)

    # reading scorers off the training record costs no pass; mc_dropout costs its samples
    assert score_weight(["el2n", "forgetting", "dynamic_dice"]) == pytest.approx(score_weight([]))
    assert score_weight(["mc_dropout"]) > score_weight(["loss"]) > score_weight([])
    assert SCORERS["mc_dropout"].passes == MC_DROPOUT_SAMPLES and not SCORERS["pruning"].needs_target


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"train": {"epochs": "1"}}, "epochs"),
        ({"train": {"augment": "yes"}}, "augment"),
        ({"train": {"lr": "0.1"}}, "lr"),
        ({"image_size": 64.5}, "image_size"),
        ({"image_size": "64"}, "image_size"),
    ],
)
def test_the_spec_coerces_no_strings_to_numbers_or_booleans(spec, field):
    with pytest.raises(ValidationError, match=field):
        JobSpec.model_validate_json(json.dumps(spec))
    assert JobSpec.model_validate_json(json.dumps({"train": {"lr": 1}})).train.lr == 1.0  # a JSON integer is a number
