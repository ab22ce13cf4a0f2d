import pytest
import torch

from ml.models import build_model, prunable_layers
from ml.prune import apply_pruning_masks, make_permanent, prune_model, sparsity_report
from ml.train import FitConfig, fit, prepare_for_device

from .helpers import synthetic_decoded


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7, 0.9])
def test_achieved_sparsity_equals_the_request(sparsity):
    torch.manual_seed(0)
    dense = prepare_for_device(build_model("unet", width=8), "cpu", precision="fp32")  # channels_last, as trained
    pruned, report = prune_model(dense, sparsity)
    total = sum(m.weight.numel() for _, m in prunable_layers(pruned))
    assert abs(report.achieved - sparsity) <= 1 / total
    zeros = sum(int((m.weight == 0).sum()) for _, m in prunable_layers(pruned))
    assert zeros / total == report.achieved
    # the up-sampling path is pruned too, and the dense model is untouched
    assert any(v > 0 for k, v in report.layers.items() if k.startswith("up."))
    assert sparsity_report(dense, 0).achieved == 0


def test_lraspp_prunes_to_the_requested_sparsity():
    torch.manual_seed(0)
    _, report = prune_model(build_model("lraspp_mobilenet_v3"), 0.5)
    assert abs(report.achieved - 0.5) < 1e-4


def test_fine_tuning_keeps_the_pruning_masks(tmp_path):
    _, decoded = synthetic_decoded(tmp_path, n=16)
    torch.manual_seed(0)
    dense = build_model("unet", width=8)
    masked = prepare_for_device(apply_pruning_masks(dense, 0.6), "cpu", precision="fp32")
    before = {k: v.clone() for k, v in masked.state_dict().items() if k.endswith("weight_orig")}
    fit(masked, decoded, list(range(16)), FitConfig(epochs=2, batch_size=8))
    after = masked.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it did train
    model = make_permanent(masked)
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in model.state_dict())
    assert abs(sparsity_report(model, 0.6).achieved - 0.6) < 1e-3
