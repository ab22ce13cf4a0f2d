import pytest
import torch
from torch import nn

from ml.models import ARCHES, build_model, prunable_layers


@pytest.mark.parametrize("arch", ARCHES)
def test_every_architecture_answers_one_logit_channel_at_input_size(arch):
    torch.manual_seed(0)
    model = build_model(arch, width=8, encoder="resnet18" if arch == "flexible_unet" else None).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64)


def test_unet_prunable_layers_include_transposed_convolutions():
    kinds = {type(m) for _, m in prunable_layers(build_model("unet", width=8))}
    assert kinds == {nn.Conv2d, nn.ConvTranspose2d}


def test_unet_width_sets_its_size():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_model("unet", width=16)) > 3 * count(build_model("unet", width=8))


def test_unknown_architecture_is_named_in_the_error():
    with pytest.raises(ValueError, match="'vit'"):
        build_model("vit")
