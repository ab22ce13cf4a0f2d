"""MONAI's networks in the pipeline: FlexibleUNet (ResNet, EfficientNet encoders) and UNet build,
train, prune, score and checkpoint like the U-Net; encoder weights the test writes itself are loaded
exactly, and a missing, mismatched or corrupted file is refused naming the problem (never a silent
random start). Nothing downloads: the URL case is served from this process."""

import functools
import hashlib
import http.server
import json
import threading

import pytest
import torch
from pydantic import ValidationError

from contract.jobspec import JobSpec
from ml.checkpoints import load_checkpoint
from ml.encoder_weights import WeightsError
from ml.job_context import JobContext
from ml.models import build_model, prunable_layers
from ml.pipeline import Run
from ml.synthetic import make_dataset

pytestmark = pytest.mark.torch


def _spec(**model) -> JobSpec:
    return JobSpec.model_validate(
        {
            "image_size": 32,
            "model": {"width": 4, **model},
            "split": {"group_column": "lesion_id"},
            "train": {"epochs": 1, "batch_size": 8},
            "prune": {"sparsities": [0.5]},
        }
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("monai") / "data", n=24, size=32, seed=0)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "efficientnet-b0"])
def test_every_encoder_builds_and_its_convolutions_prune(encoder):
    model = build_model("flexible_unet", 4, encoder=encoder)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1, 32, 32)
    assert len(prunable_layers(model)) > 20


@pytest.mark.parametrize("model", [{"arch": "flexible_unet", "encoder": "resnet18"}, {"arch": "monai_unet"}])
def test_a_monai_network_runs_the_whole_job(data, tmp_path, model):
    out = tmp_path / "run"
    Run(data, _spec(**model), out, device="cpu").run()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"dense", "attended", "pruned@0.5"}
    pruned = metrics["pruning"]["0.5"]
    assert abs(pruned["achieved"] - 0.5) < 0.01 and not pruned["degenerate"]
    assert {"hd95", "nsd"} <= set(metrics["models"]["dense"]["overall"])
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores) == len(JobContext(data, _spec(**model), tmp_path / "ctx", device="cpu").train_idx)
    assert (out / "gallery.json").is_file()
    dense, meta = load_checkpoint(out / "checkpoints" / "dense.safetensors")
    assert type(dense).__name__ == {"flexible_unet": "FlexibleUNet", "monai_unet": "UNet"}[model["arch"]]
    assert meta["architecture"].get("encoder") == model.get("encoder")


def _encoder_file(tmp_path, encoder="resnet18", *, prefix="module.", extra=None, name="enc.pt"):
    torch.manual_seed(123)
    state = build_model("flexible_unet", 4, encoder=encoder).encoder.state_dict()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    saved = {prefix + k: v for k, v in state.items()} | (extra or {})
    path = tmp_path / name
    torch.save({"state_dict": saved}, path)
    return path, state


def test_encoder_weights_are_loaded_exactly(data, tmp_path):
    # torchvision-style extras are tolerated: a classifier head and projection shortcuts
    extra = {
        "module.fc.weight": torch.zeros(10, 512),
        "module.layer2.0.downsample.0.weight": torch.zeros(128, 64, 1, 1),
    }
    path, state = _encoder_file(tmp_path, extra=extra)
    spec = _spec(arch="flexible_unet", encoder="resnet18", weights=str(path))
    model = JobContext(data, spec, tmp_path / "run", device="cpu").inputs().fresh_model()
    loaded = model.encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    # without model.weights the same seed starts elsewhere: the loading is what moved it
    plain = JobContext(data, _spec(arch="flexible_unet", encoder="resnet18"), tmp_path / "r2", device="cpu")
    assert not torch.equal(plain.inputs().fresh_model().encoder.state_dict()["conv1.weight"], state["conv1.weight"])


def test_mismatched_missing_and_corrupt_weights_are_refused(data, tmp_path):
    runs = iter(range(100))

    def refused(weights, **more):
        spec = _spec(arch="flexible_unet", encoder="resnet18", weights=str(weights), **more)
        with pytest.raises(WeightsError) as e:
            JobContext(data, spec, tmp_path / f"run{next(runs)}", device="cpu").inputs()
        return str(e.value)

    resnet34, _ = _encoder_file(tmp_path, "resnet34", name="r34.pt")
    assert "tensors are not the encoder's (e.g. layer1.2." in refused(resnet34)  # ResNet-34 into a ResNet-18
    effnet, _ = _encoder_file(tmp_path, "efficientnet-b0", name="b0.pt")
    assert "of the encoder's 102 tensors are missing" in refused(effnet)
    assert "is not a file on this worker" in refused(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert "is not a torch state dict or safetensors file" in refused(garbage)
    good, _ = _encoder_file(tmp_path)
    assert "has sha256" in refused(good, weights_sha256="0" * 64)


def test_weights_from_a_url_and_checked_by_sha256(data, tmp_path):
    path, state = _encoder_file(tmp_path, prefix="encoder.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{path.name}"
        spec = _spec(arch="flexible_unet", encoder="resnet18", weights=url, weights_sha256=digest)
        model = JobContext(data, spec, tmp_path / "run", device="cpu").inputs().fresh_model()
        assert torch.equal(model.encoder.state_dict()["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
        missing = _spec(arch="flexible_unet", encoder="resnet18", weights=url + ".gone")
        with pytest.raises(WeightsError, match="could not be downloaded"):
            JobContext(data, missing, tmp_path / "run2", device="cpu").inputs()
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "model,size,message",
    [
        ({"arch": "flexible_unet"}, 32, "needs model.encoder"),
        ({"arch": "unet", "encoder": "resnet18"}, 32, "are flexible_unet's"),
        ({"arch": "flexible_unet", "encoder": "resnet18", "weights": "enc.pt"}, 32, "absolute path"),
        ({"arch": "flexible_unet", "encoder": "vgg16"}, 32, "encoder"),
    ],
)
def test_specs_that_cannot_work_are_refused(model, size, message):
    with pytest.raises(ValidationError, match=message):
        JobSpec.model_validate({"image_size": size, "model": model})
