"""Segmentation models with one output channel (lesion logit): a small U-Net and two torchvision
models built with weights=None, so nothing is downloaded."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet50, lraspp_mobilenet_v3_large

ARCHES = ("unet", "lraspp_mobilenet_v3", "deeplabv3_resnet50")


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Four levels down, four up (transposed convolutions), skip connections, width doubling per level."""

    def __init__(self, width: int = 16, levels: int = 4, in_channels: int = 3):
        super().__init__()
        widths = [width * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])])
        self.down.extend(_double_conv(widths[i], widths[i + 1]) for i in range(levels))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(levels)))
        self.merge = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in reversed(range(levels)))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


class _TorchvisionSegmentation(nn.Module):
    """torchvision's segmentation models answer a dict; the pipeline wants the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def build_model(arch: str, width: int = 16) -> nn.Module:
    if arch == "unet":
        return UNet(width=width)
    if arch == "lraspp_mobilenet_v3":
        return _TorchvisionSegmentation(lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=1))
    if arch == "deeplabv3_resnet50":
        return _TorchvisionSegmentation(
            deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=1, aux_loss=False)
        )
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHES}")


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every convolution and transposed convolution (ConvTranspose2d is not a Conv2d subclass)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
