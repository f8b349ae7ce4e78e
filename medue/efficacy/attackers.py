"""The unauthorised trainer's models: MONAI networks where they exist, sized for 64-128 px slices on a CPU.

Every attacker is a standard architecture an outside party would reach for, not medue's surrogate:

* ``resnet18``: MONAI ``ResNet`` with the ResNet-18 layout (4 stages x 2 basic blocks), a 3x3 stem and max pool
  (the usual small-image stem), stage widths ``(w, 2w, 4w, 8w)``; trained with flip + crop augmentation in the
  release benchmark.
* ``densenet121``: MONAI ``DenseNet`` with DenseNet-121's block layout ``(6, 12, 24, 16)``; growth rate and stem
  width scaled by ``w`` (``w=16``: growth 8, 16 stem features) so that it trains on 2 CPU cores.
* ``plain_cnn``: 8 convolutions (3x3, batch norm, ReLU) in 4 stages with max pooling, global average pooling and
  one linear layer, no residual connections: the simplest model a stranger would train, without augmentation.
* ``monai_classifier``: MONAI's ``Classifier`` (strided convolutions), kept for the earlier tables.
* ``resnet18_full``, ``densenet121_full``: MONAI's ``resnet18`` and ``DenseNet121`` exactly as the library builds
  them (full widths, 7x7 stride-2 stem and max pool for the ResNet), single-channel input.
* ``vit_small``: MONAI ``ViT`` with 8 px patches, 6 layers of width 192 and 6 heads; classification head.
"""

from __future__ import annotations

from torch import nn

ATTACKERS = ("resnet18", "densenet121", "plain_cnn", "monai_classifier", "resnet18_full", "densenet121_full",
             "vit_small")

#: SGD learning rate per architecture when TrainSettings.lr is None (Adam: ADAM_LR).
DEFAULT_LR = {"resnet18": 0.05, "densenet121": 0.05, "plain_cnn": 0.05, "monai_classifier": 0.01,
              "resnet18_full": 0.05, "densenet121_full": 0.05, "vit_small": 0.01}
ADAM_LR = 1e-3


class _Logits(nn.Module):
    """The logits of a network that returns ``(logits, hidden states)`` (MONAI's ViT)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):  # noqa: D102
        out = self.net(x)
        return out[0] if isinstance(out, tuple) else out


def plain_cnn(num_classes: int, *, width: int = 16, in_channels: int = 1) -> nn.Sequential:
    """8 conv layers, widths ``(w, w, 2w, 2w, 4w, 4w, 8w, 8w)``, max pool after every second one."""
    layers: list[nn.Module] = []
    cin = in_channels
    for stage, mult in enumerate((1, 2, 4, 8)):
        for _ in range(2):
            layers += [nn.Conv2d(cin, width * mult, 3, padding=1, bias=False), nn.BatchNorm2d(width * mult),
                       nn.ReLU(inplace=True)]
            cin = width * mult
        if stage < 3:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def build_attacker(arch: str, num_classes: int, *, image_size: int, width: int = 16) -> nn.Module:
    """An attacker's model for single-channel ``image_size`` x ``image_size`` input."""
    if arch == "resnet18":
        from monai.networks.nets import ResNet

        return ResNet(block="basic", layers=[2, 2, 2, 2], block_inplanes=[width, 2 * width, 4 * width, 8 * width],
                      spatial_dims=2, n_input_channels=1, conv1_t_size=3, conv1_t_stride=1, num_classes=num_classes)
    if arch == "densenet121":
        from monai.networks.nets import DenseNet

        return DenseNet(spatial_dims=2, in_channels=1, out_channels=num_classes, init_features=width,
                        growth_rate=max(width // 2, 4), block_config=(6, 12, 24, 16))
    if arch == "plain_cnn":
        return plain_cnn(num_classes, width=width)
    if arch == "monai_classifier":
        from monai.networks.nets import Classifier

        return Classifier(in_shape=(1, image_size, image_size), classes=num_classes,
                          channels=(width, 2 * width, 4 * width), strides=(2, 2, 2))
    if arch == "resnet18_full":
        from monai.networks.nets import resnet18

        return resnet18(spatial_dims=2, n_input_channels=1, num_classes=num_classes)
    if arch == "densenet121_full":
        from monai.networks.nets import DenseNet121

        return DenseNet121(spatial_dims=2, in_channels=1, out_channels=num_classes)
    if arch == "vit_small":
        from monai.networks.nets import ViT

        patch = 8 if image_size % 8 == 0 and image_size >= 16 else 4 if image_size % 4 == 0 else 1
        return _Logits(ViT(in_channels=1, img_size=image_size, patch_size=patch, hidden_size=192, mlp_dim=768,
                           num_layers=6, num_heads=6, classification=True, num_classes=num_classes, spatial_dims=2,
                           post_activation=None))  # logits, not the default tanh-squashed scores
    raise ValueError(f"unknown attacker architecture {arch!r}; expected one of {', '.join(ATTACKERS)}")
