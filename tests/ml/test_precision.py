"""train.precision: 'auto' resolves by the device's native bf16, bf16 autocasts the convolutions
(the loss stays float32), a bf16 job runs end to end and records what ran."""

import json

import pytest
import torch
from torch import nn

from contract.jobspec import JobSpec
from ml import precision
from ml.data import decode_dataset, scan_dataset
from ml.models import build_model
from ml.pipeline import run_pipeline
from ml.synthetic import make_dataset
from ml.train import FitConfig, fit, predict_logits, prepare_for_device

CPU = torch.device("cpu")
REAL_NATIVE_BF16 = precision.native_bf16  # read at collection, before the suite pins it (tests/conftest.py)


def test_auto_is_bf16_only_where_the_cpu_has_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", REAL_NATIVE_BF16)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert precision.resolve("auto", "cpu") == "fp32"
    for flag in ("avx512_bf16", "amx_bf16"):
        monkeypatch.setattr(precision, "cpu_flags", lambda flag=flag: frozenset({"avx2", flag}))
        assert precision.resolve("auto", "cpu") == ("bf16" if torch.backends.mkldnn.is_available() else "fp32")


def test_explicit_precisions_resolve_as_asked_and_unknown_ones_are_refused():
    assert precision.resolve("fp32", "cpu") == "fp32"
    assert precision.resolve("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        precision.resolve("fp16", "cpu")
    with pytest.raises(ValueError):
        JobSpec.model_validate({"train": {"precision": "fp16"}})
    assert JobSpec().train.precision == "auto"


def _conv_output_dtypes(model: nn.Module, images_u8: torch.Tensor) -> set[torch.dtype]:
    seen: set[torch.dtype] = set()
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    logits = predict_logits(model, images_u8)
    for h in hooks:
        h.remove()
    assert logits.dtype == torch.float32  # what scoring and Dice read is float32 either way
    return seen


def test_bf16_runs_the_convolutions_in_bf16_and_fp32_does_not():
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    bf16 = prepare_for_device(build_model("unet", width=4), "cpu", precision="bf16").eval()
    fp32 = prepare_for_device(build_model("unet", width=4), "cpu", precision="fp32").eval()
    assert _conv_output_dtypes(bf16, images) == {torch.bfloat16}
    assert _conv_output_dtypes(fp32, images) == {torch.float32}
    assert precision.precision_of(bf16) == "bf16" and precision.precision_of(fp32) == "fp32"


def test_bf16_training_learns_as_fp32_does_and_is_deterministic(tmp_path):
    root = make_dataset(tmp_path / "data", n=64, size=32, hard_fraction=0.0, seed=0)
    data = decode_dataset(scan_dataset(root), 32)
    indices = list(range(64))

    def train(precision: str) -> tuple[list[float], torch.Tensor]:
        torch.manual_seed(0)
        model = prepare_for_device(build_model("unet", width=4), "cpu", precision=precision)
        losses = fit(model, data, indices, FitConfig(epochs=6, batch_size=16, lr=1e-2, seed=0))
        return losses, next(iter(model.parameters())).detach().clone()

    losses, weights = train("bf16")
    fp32, fp32_weights = train("fp32")
    assert losses[-1] < 0.8 * losses[0], losses
    assert abs(losses[-1] - fp32[-1]) < 0.05 * fp32[-1], (losses, fp32)
    assert not torch.equal(weights, fp32_weights)  # the precision did change the arithmetic
    again, weights_again = train("bf16")
    assert again == losses
    assert torch.equal(weights, weights_again)


def test_a_bf16_job_runs_end_to_end_and_records_its_precision(tmp_path):
    root = make_dataset(tmp_path / "data", n=60, size=32, hard_fraction=0.15, seed=0)
    spec = JobSpec.model_validate(
        {
            "image_size": 32,
            "model": {"width": 4},
            "train": {"epochs": 1, "precision": "bf16"},
            "prune": {"sparsities": [0.5]},
            "label_check": {"enabled": False},
            "attention": {"control": "random"},
        }
    )
    metrics = run_pipeline(root, spec, tmp_path / "out", device="cpu")
    assert metrics["precision"]["inference"] == "bf16"
    assert set(metrics["precision"]["training"]) == {"dense", "attended", "control"}
    assert set(metrics["precision"]["training"].values()) == {"bf16"}
    assert json.loads((tmp_path / "out" / "spec.json").read_text())["train"]["precision"] == "bf16"


def test_auto_records_what_it_resolved_to(tmp_path):
    root = make_dataset(tmp_path / "data", n=40, size=32, hard_fraction=0.15, seed=0)
    spec = JobSpec.model_validate(
        {
            "image_size": 32,
            "model": {"width": 4},
            "train": {"epochs": 1},
            "prune": {"sparsities": [0.5]},
            "label_check": {"enabled": False},
        }
    )
    metrics = run_pipeline(root, spec, tmp_path / "out", device="cpu")
    # in this suite 'auto' resolves to fp32 (tests/conftest.py)
    assert metrics["precision"] == {"training": {"dense": "fp32", "attended": "fp32"}, "inference": "fp32"}
