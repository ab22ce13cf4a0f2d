import json
import subprocess
import sys

import pytest

from ml.synthetic import make_dataset


def _htl(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.mark.torch
def test_htl_run_writes_every_output(tmp_path):
    data = make_dataset(tmp_path / "data", n=40, size=32, seed=2)
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "image_size": 32,
                "model": {"width": 4},
                "train": {"epochs": 1, "batch_size": 8},
                "prune": {"sparsities": [0.5]},
            }
        )
    )
    out = tmp_path / "out"
    result = _htl("run", str(data), "--spec", str(spec), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "attended - dense dice" in result.stdout
    for name in (
        "scores.json",
        "metrics.json",
        "spec.json",
        "checkpoints/dense.safetensors",
        "checkpoints/attended.safetensors",
        "checkpoints/pruned@0.5.safetensors",
    ):
        assert (out / name).is_file(), name
    assert len(list((out / "predictions" / "dense").glob("*.png"))) == 8
    assert len(json.loads((out / "scores.json").read_text())) == 32


def test_htl_run_rejects_a_bad_spec_before_any_work(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, size=32)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"prune": {"sparsities": [1.5]}, "train": {"epochz": 2}}))
    result = _htl("run", str(data), "--spec", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "prune.sparsities" in result.stderr and "train.epochz" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.torch
def test_htl_run_rejects_a_group_column_the_metadata_lacks(tmp_path):
    data = make_dataset(tmp_path / "data", n=8, size=32)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"split": {"group_column": "patient"}}))
    result = _htl("run", str(data), "--spec", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "split.group_column" in result.stderr and "patient" in result.stderr
    assert not (tmp_path / "out").exists()


def test_every_option_of_every_command_has_help():
    import argparse

    from app.cli import build_parser

    missing = []

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    walk(child, f"{name} {sub}")
            elif not action.help and action.dest != "help":
                missing.append(f"{name} {action.option_strings or action.dest}")

    walk(build_parser(), "htl")
    assert not missing, missing
