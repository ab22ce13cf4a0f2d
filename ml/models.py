"""Segmentation models with one output channel (lesion logit): a small U-Net, two torchvision models
built with weights=None, and MONAI's FlexibleUNet (a ResNet or EfficientNet encoder, pretrained=False:
encoder weights come only from model.weights, ml.encoder_weights) and UNet. Nothing is downloaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.models.segmentation import deeplabv3_resnet50, lraspp_mobilenet_v3_large

from contract.jobspec import CLASSIFIERS, SEGMENTERS, Encoder

ENCODERS = get_args(Encoder)
ARCHES = SEGMENTERS + CLASSIFIERS


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
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(levels))
        )
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


class CamClassifier(nn.Module):
    """An image classifier (one logit: positive) whose forward answers a localization map, so the
    pipeline treats it like a segmentation model: the class activation map (CAM, Zhou et al. 2016) of
    the positive class, whatever the prediction (a map that flipped sign with the predicted class
    would make a pruned model that flips the class disagree with the whole image), measured from the
    image's own background: (cam - median) / (max - median), so 0 is the median pixel (background
    while the lesion covers under half the image) and 1 the peak; minus cam_threshold: > 0 is lesion.
    classify() answers the classification logit, for training and AUROC."""

    def __init__(self, features: nn.Module, channels: int, cam_threshold: float):
        super().__init__()
        self.features = features
        self.head = nn.Linear(channels, 1)
        self.cam_threshold = cam_threshold

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)

    def cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the positive class's CAM at input size, relative to the image's median and peak; the
        classification logit)."""
        feats = self.features(x)
        logit = self.head(feats.mean(dim=(2, 3))).squeeze(1)
        cam = torch.einsum("nchw,c->nhw", feats, self.head.weight[0]).unsqueeze(1)
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
        flat = cam.flatten(1)
        background, peak = flat.median(1, keepdim=True).values, flat.max(1, keepdim=True).values
        relative = ((flat - background) / (peak - background).clamp_min(1e-8)).view_as(cam)
        return relative, logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam(x)[0] - self.cam_threshold


# poolings before the small CNN's last features: 2 keeps a map of 1/4 of the input (16 x 16 at 64 px).
# 1 (1/2) localized better on validation, but its HTL ranking lost the planted minority at one torch
# thread; 3 (1/8) is the coarse map this replaced (BENCHMARKS.md, "The weak localizer")
CAM_POOLINGS = 2


def _small_cnn_features(width: int, poolings: int = CAM_POOLINGS) -> nn.Sequential:
    """Four conv blocks with a pooling after each of the first `poolings`: the map keeps
    1/2**poolings of the input's resolution."""
    layers: list[nn.Module] = []
    cin = 3
    for i in range(4):
        cout = width * 2**i
        layers += [_double_conv(cin, cout)]
        if i < poolings:
            layers.append(nn.MaxPool2d(2))
        cin = cout
    return nn.Sequential(*layers)


def _monai_model(arch: str, width: int, encoder: str | None) -> nn.Module:
    from monai.networks.nets import FlexibleUNet
    from monai.networks.nets import UNet as MonaiUNet

    if arch == "flexible_unet":
        if encoder not in ENCODERS:
            raise ValueError(f"flexible_unet needs model.encoder, one of {ENCODERS}")
        decoder = tuple(width * 2**i for i in reversed(range(5)))  # width 16: MONAI's default (256, ..., 16)
        return FlexibleUNet(
            in_channels=3, out_channels=1, backbone=encoder, pretrained=False, spatial_dims=2, decoder_channels=decoder
        )
    return MonaiUNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        channels=tuple(width * 2**i for i in range(5)),
        strides=(2, 2, 2, 2),
        num_res_units=2,
    )


def build_model(
    arch: str,
    width: int = 16,
    cam_threshold: float = 0.2,
    cam_poolings: int = CAM_POOLINGS,
    encoder: str | None = None,
) -> nn.Module:
    if arch in ("flexible_unet", "monai_unet"):
        return _monai_model(arch, width, encoder)
    if arch == "cnn":
        return CamClassifier(_small_cnn_features(width, cam_poolings), width * 8, cam_threshold)
    if arch == "resnet18":
        r = resnet18(weights=None)
        features = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4)
        return CamClassifier(features, 512, cam_threshold)
    if arch == "unet":
        return UNet(width=width)
    if arch == "lraspp_mobilenet_v3":
        return _TorchvisionSegmentation(lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=1))
    if arch == "deeplabv3_resnet50":
        return _TorchvisionSegmentation(
            deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=1, aux_loss=False)
        )
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHES}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: what the pipeline builds from and checkpoints store."""

    arch: str
    width: int = 16
    cam_threshold: float = (
        0.2  # CAM classifiers only: above the median, the share of the way to the peak that is lesion
    )
    cam_poolings: int = CAM_POOLINGS  # the small CNN only
    encoder: str | None = None  # flexible_unet only

    def build(self) -> nn.Module:
        return build_model(
            self.arch,
            self.width,
            cam_threshold=self.cam_threshold,
            cam_poolings=self.cam_poolings,
            encoder=self.encoder,
        )

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        # a checkpoint written before cam_poolings was recorded was built with 3 (weights alike: only the map differs)
        return cls(
            **{k: raw[k] for k in ("arch", "width", "cam_threshold", "encoder") if k in raw},
            cam_poolings=raw.get("cam_poolings", 3),
        )


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every convolution and transposed convolution (ConvTranspose2d is not a Conv2d subclass)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
