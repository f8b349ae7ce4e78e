"""The attacker suite of ``medue evaluate``: how people actually train, as named attacks.

An :class:`Attack` is one way an unauthorised party trains on released images: a network, an augmentation recipe
(MONAI transforms, :mod:`medue.efficacy.augment`), a purification applied to the released images before training
(:mod:`medue.efficacy.countermeasures`), a resolution, clean images of every class mixed in from elsewhere, and an
optimiser, schedule and number of epochs. Every attack is trained on the release (one run per seed) and on the clean
originals of the same items (its baseline), and tested on clean images it never saw.

Three suites select from :data:`CATALOGUE`:

* ``quick``: plain training and the MONAI tutorial recipe (the first ordinary habit), one slim network;
* ``standard``: every everyday habit and purification on the slim ResNet-18, plus half resolution and mixing;
* ``full``: ``standard`` plus double resolution, 30-epoch SGD with a cosine schedule, and the full-width networks
  (MONAI ResNet-18 and DenseNet-121 as the library builds them, a small MONAI ViT); its headline attacks run on
  :attr:`ReleaseEvalSettings.headline_seeds`.

:data:`NOT_TESTED` names what no suite runs, so that a report can say it in plain words.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from medue.evidence import NEVER_TESTED
from medue.habits import GROUPS, HABITS, RECIPES

#: Optimiser and schedule names: SGD with momentum and a one-cycle or cosine schedule, or Adam at a fixed rate.
OPTIMIZERS = ("sgd_onecycle", "sgd_cosine", "adam")


@dataclasses.dataclass(frozen=True)
class Attack:
    """One attacker's training habit (see the module docstring).

    Attributes:
        name: Row name in results and reports.
        architecture: A key of :data:`medue.efficacy.attackers.ATTACKERS`.
        recipe: Augmentation recipe, one of :data:`medue.habits.RECIPES`.
        purification: ``"none"``, one of :data:`medue.habits.PURIFICATIONS` or ``"adversarial_training"``.
        scale: Train and test at this multiple of the released resolution (area down, bilinear up).
        clean_mix: Clean images of every class added to the training set, as a fraction of its size, drawn from
            images the release did not contain.
        optimizer: One of :data:`OPTIMIZERS`.
        epochs: Epochs; ``None`` takes :attr:`ReleaseEvalSettings.epochs`.
        lr: Learning rate; ``None`` takes the optimiser's default for the architecture.
        habit: The group it belongs to, one of :data:`medue.habits.GROUPS` (the report groups its verdict by them).
        headline: Runs on the headline seeds (4 in the full suite).
        words: What the attacker does, in words for the report.
    """

    name: str
    architecture: str
    habit: str
    words: str
    recipe: str = "none"
    purification: str = "none"
    scale: float = 1.0
    clean_mix: float = 0.0
    optimizer: str = "sgd_onecycle"
    epochs: int | None = None
    lr: float | None = None
    headline: bool = False

    def record(self) -> dict[str, Any]:
        """The fields a result row carries (JSON-ready)."""
        return {"attack": self.name, "habit": self.habit, "architecture": self.architecture,
                "augmentation": self.recipe, "countermeasure": self.purification, "scale": self.scale,
                "clean_mix": self.clean_mix, "optimizer": self.optimizer}


def _attacks(*attacks: Attack) -> dict[str, Attack]:
    for a in attacks:  # every attack speaks the one vocabulary of medue.habits
        assert a.habit in GROUPS and a.recipe in RECIPES, a
        assert a.purification == "none" or HABITS[a.purification].attack in ("purification", "training"), a
    return {a.name: a for a in attacks}


#: Every attack medue knows, in the order the suites run them (cheap and telling first).
CATALOGUE: dict[str, Attack] = _attacks(
    Attack("plain_cnn", "plain_cnn", "plain", "a plain 8-layer CNN, no augmentation"),
    Attack("resnet18_flip_crop", "resnet18", "plain", "ResNet-18 (slim) with flip and pad-crop", recipe="flip_crop",
           headline=True),
    Attack("resnet18_monai_tutorial", "resnet18", "augmentation",
           "ResNet-18 (slim) with the augmentations of MONAI's tutorials (flip, rotate 15 deg, zoom 0.9-1.1, "
           "Gaussian smoothing and noise, contrast)", recipe="monai_tutorial", headline=True),
    Attack("resnet18_half_resolution", "resnet18", "resampling",
           "ResNet-18 (slim) trained and tested at half the released resolution (area downsampling)",
           recipe="flip_crop", scale=0.5, headline=True),
    Attack("resnet18_mix10", "resnet18", "mixing",
           "ResNet-18 (slim) on the release plus clean images of every class from elsewhere (10 % of its size)",
           recipe="flip_crop", clean_mix=0.10),
    Attack("resnet18_mix25", "resnet18", "mixing",
           "ResNet-18 (slim) on the release plus clean images of every class from elsewhere (25 % of its size)",
           recipe="flip_crop", clean_mix=0.25),
    Attack("densenet121_flip_crop", "densenet121", "network", "DenseNet-121 layout (slim) with flip and pad-crop",
           recipe="flip_crop"),
    Attack("resnet18_jpeg_q10", "resnet18", "purification", "JPEG quality 10 before training",
           recipe="flip_crop", purification="jpeg_q10"),
    Attack("resnet18_bit_depth_3", "resnet18", "purification", "3-bit depth reduction before training",
           recipe="flip_crop", purification="bit_depth_3"),
    Attack("resnet18_median_3x3", "resnet18", "purification", "3x3 median filter before training",
           recipe="flip_crop", purification="median"),
    Attack("resnet18_gaussian_blur", "resnet18", "purification", "Gaussian blur (sigma 1 px) before training",
           recipe="flip_crop", purification="blur"),
    Attack("resnet18_adversarial_training", "resnet18", "purification",
           "adversarial training (PGD, L-inf 2/255)", recipe="flip_crop", purification="adversarial_training"),
    Attack("resnet18_band_stop", "resnet18", "purification",
           "an informed attacker: every component of 2.5-6.5 cycles per image side removed before training (where "
           "a low-frequency field sits)", recipe="flip_crop", purification="band_stop"),
    Attack("resnet18_high_pass", "resnet18", "purification",
           "an informed attacker: every component below 6.5 cycles per image side removed before training",
           recipe="flip_crop", purification="high_pass"),
    Attack("resnet18_detrend", "resnet18", "purification",
           "per-image bias-field correction (the image divided by its smoothing on the head) before training",
           recipe="flip_crop", purification="detrend"),
    Attack("resnet18_double_resolution", "resnet18", "resampling",
           "ResNet-18 (slim) trained and tested at double the released resolution (bilinear)",
           recipe="flip_crop", scale=2.0),
    Attack("resnet18_sgd_cosine_30", "resnet18", "training",
           "ResNet-18 (slim), 30 epochs of SGD with momentum and a cosine schedule", recipe="flip_crop",
           optimizer="sgd_cosine", epochs=30),
    Attack("vit_small", "vit_small", "network", "a small MONAI ViT (8 px patches), Adam 1e-4, 20 epochs",
           recipe="flip_crop", optimizer="adam", epochs=20, lr=1e-4),
    Attack("resnet18_full", "resnet18_full", "network",
           "MONAI ResNet-18 at full width as the library builds it, Adam, 8 epochs", recipe="flip_crop",
           optimizer="adam", epochs=8, headline=True),
    Attack("densenet121_full", "densenet121_full", "network",
           "MONAI DenseNet-121 as the library builds it, Adam, 8 epochs", recipe="flip_crop", optimizer="adam",
           epochs=8),
)

#: The attacks of each suite, by name.
SUITES: dict[str, tuple[str, ...]] = {
    "quick": ("plain_cnn", "resnet18_flip_crop", "resnet18_monai_tutorial"),
    "standard": ("plain_cnn", "resnet18_flip_crop", "resnet18_monai_tutorial", "resnet18_half_resolution",
                 "resnet18_mix10", "resnet18_mix25", "densenet121_flip_crop", "resnet18_jpeg_q10",
                 "resnet18_bit_depth_3", "resnet18_median_3x3", "resnet18_gaussian_blur",
                 "resnet18_adversarial_training"),
}
SUITES["full"] = (*SUITES["standard"], "resnet18_double_resolution", "resnet18_sgd_cosine_30", "vit_small",
                  "resnet18_full", "densenet121_full", "resnet18_band_stop", "resnet18_high_pass", "resnet18_detrend")

#: What no suite runs: a report lists these as "not tested" whatever the suite measured.
NOT_TESTED = NEVER_TESTED


def suite_attacks(suite: str | None = None, names: tuple[str, ...] | None = None) -> tuple[Attack, ...]:
    """The attacks of ``suite``, or the named ones (in catalogue order).

    Raises:
        KeyError: an unknown suite or attack name (the message lists the known ones).
    """
    if names:
        unknown = [n for n in names if n not in CATALOGUE]
        if unknown:
            raise KeyError(f"unknown attack(s) {', '.join(unknown)}; known: {', '.join(CATALOGUE)}")
        return tuple(a for n, a in CATALOGUE.items() if n in names)
    if suite not in SUITES:
        raise KeyError(f"unknown suite {suite!r}; expected one of {', '.join(SUITES)}")
    return tuple(CATALOGUE[n] for n in SUITES[suite])
