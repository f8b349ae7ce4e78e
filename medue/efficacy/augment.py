"""Augmentation recipes of the attacker suite (:data:`medue.habits.RECIPES`), built from MONAI's own transforms.

Each recipe is a :class:`monai.transforms.Compose` applied to one ``(1, H, W)`` image in ``[0, 1]`` at a time,
on whatever device the image is on, with a random state seeded by the training run:

* ``none``: no augmentation;
* ``flip_crop``: horizontal flip (p 0.5), reflect padding of 1/16 of the side, random crop back to the side;
* ``monai_tutorial``: what MONAI's classification tutorials use (MedNIST: ``RandRotate`` +-15 deg, ``RandFlip``,
  ``RandZoom`` 0.9-1.1, each p 0.5) plus the intensity transforms of its other tutorials: ``RandGaussianSmooth``
  (sigma 0.5-1 px, p 0.2), ``RandGaussianNoise`` (std 0.02, p 0.2), ``RandAdjustContrast`` (gamma 0.7-1.5, p 0.3).
"""

from __future__ import annotations

import math

import torch
from monai.utils import convert_to_tensor
from monai.transforms import (BorderPad, Compose, RandAdjustContrast, RandFlip, RandGaussianNoise,
                              RandGaussianSmooth, RandRotate, RandSpatialCrop, RandZoom)

from medue.habits import RECIPES


def build_recipe(name: str, side: int) -> Compose | None:
    """The MONAI transforms of recipe ``name`` for ``side`` x ``side`` images (``None`` for ``none``)."""
    if name == "none":
        return None
    if name == "flip_crop":
        pad = max(1, side // 16)
        return Compose([RandFlip(prob=0.5, spatial_axis=1), BorderPad(pad, mode="reflect"),
                        RandSpatialCrop((side, side), random_size=False)])
    if name == "monai_tutorial":
        return Compose([RandRotate(range_x=math.pi / 12, prob=0.5, keep_size=True),
                        RandFlip(prob=0.5, spatial_axis=1),
                        RandZoom(min_zoom=0.9, max_zoom=1.1, prob=0.5),
                        RandGaussianSmooth(sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), prob=0.2),
                        RandGaussianNoise(prob=0.2, std=0.02),
                        RandAdjustContrast(prob=0.3, gamma=(0.7, 1.5))])
    raise ValueError(f"unknown augmentation recipe {name!r}; expected one of {', '.join(RECIPES)}")


def apply_recipe(recipe: Compose | None, batch: torch.Tensor) -> torch.Tensor:
    """``recipe`` applied to each ``(1, H, W)`` image of a ``(N, 1, H, W)`` batch, clipped to ``[0, 1]``."""
    if recipe is None:
        return batch
    out = [convert_to_tensor(recipe(img), track_meta=False).to(batch.device, torch.float32) for img in batch]
    return torch.stack(out).clamp_(0.0, 1.0)
