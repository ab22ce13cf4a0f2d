"""contract.results: the typed results a unit hands on through its run folder read back as they were."""

import json

import pytest

from contract.results import (
    CheckpointFile,
    EvaluationResult,
    ImageEvaluation,
    ImageScore,
    JobResults,
    MetricValue,
    ResultError,
    decode,
    encode,
)


def sample() -> JobResults:
    return JobResults(
        scores=[
            ImageScore(
                rank=1,
                image_id='IMG "1"',
                htl_score=0.5,
                is_htl=True,
                labeled=False,
                per_sparsity={"0.5": 0.25},
                scores={"loss": None, "el2n": 1.5},
                attributes={"sex": "female"},
                subgroups={"sex": "female"},
            )
        ],
        evaluation=EvaluationResult(
            evaluations=[ImageEvaluation(model="dense-s1", split="test", image_id="IMG_2", metrics={"dice": 1.0})],
            metrics=[
                MetricValue("dense", "validation", None, None, "dice", 0.75, 3),
                MetricValue("dense", "validation", "sex", "female", "dice", 0.5, 1),
            ],
            summary={"seeds": [0, 1], "nested": {"a": [1, None]}, "warnings": ["one"]},
            subgroups={"gap_closing": None},
        ),
        checkpoints=[
            CheckpointFile(
                name="pruned@0.5-s1",
                base="pruned@0.5",
                seed=1,
                sparsity=0.5,
                path="checkpoints/pruned@0.5-s1.safetensors",
                sha256="ab" * 32,
                size_bytes=10,
            )
        ],
    )


def test_a_result_survives_json_unchanged():
    results = sample()
    assert decode(JobResults, json.loads(json.dumps(encode(results)))) == results
    assert results.warnings == ["one"]


def test_whole_numbers_come_back_as_floats_where_the_type_says_float():
    raw = encode(sample().checkpoints[0]) | {"sparsity": 1}
    assert isinstance(decode(CheckpointFile, raw).sparsity, float)
    assert decode(MetricValue, encode(sample().evaluation.metrics[0]) | {"value": 1}).value == 1.0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda raw: raw | {"colour": "red"}, "no field 'colour'"),
        (lambda raw: {k: v for k, v in raw.items() if k != "sha256"}, "sha256"),
        (lambda raw: [raw], "expected an object"),
    ],
)
def test_a_result_of_another_shape_is_refused_by_name(change, message):
    with pytest.raises(ResultError, match=message):
        decode(CheckpointFile, change(encode(sample().checkpoints[0])))
