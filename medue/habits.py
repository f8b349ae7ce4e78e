"""What an attacker does to released images before and while training: the one vocabulary medue names it in.

Every transformation has one name here, and that name is used everywhere it occurs:

* by the fits that optimise a pattern *through* it (expectation over transformation): SALM's ``habits:``
  (:data:`FIT_HABITS`, drawn by :func:`medue.protect.stand_ins.attacker_habit`) and EM's ``augment:``
  (:data:`MINMIN_AUGMENTATIONS`, applied by :func:`medue.protect.stand_ins.attacker_view`);
* by the attacker suite of ``medue evaluate``, which applies it to the release files: an attack's ``purification``
  (:data:`PURIFICATIONS`, :mod:`medue.efficacy.countermeasures`) or augmentation ``recipe`` (:data:`RECIPES`,
  :mod:`medue.efficacy.augment`);
* by the reports, which group attacks by :data:`GROUPS` (the ``habit`` of a result row).

A fit and an attack that share a name share the transformation; where their parameters differ (the fit's blur
draws sigma from 0.5-1.5 px, the attack smooths at 1 px) the entry says so. Two names of the past live on as
:data:`FORMER_NAMES`: result files written before this vocabulary carry them (their rows are kept as written; rows are
matched by attack name, which did not change), and an attack's training seed is still derived from them
(:func:`seed_name`) so that re-running a committed row reproduces it.
"""

from __future__ import annotations

import dataclasses

#: The groups a result row's ``habit`` names.
GROUPS = ("plain", "augmentation", "resampling", "mixing", "training", "network", "purification")
#: The groups a board means by "how people ordinarily train" (the report's verdict); purification is a deliberate
#: attack.
EVERYDAY = tuple(g for g in GROUPS if g != "purification")


@dataclasses.dataclass(frozen=True)
class Habit:
    """One transformation an attacker may apply.

    Attributes:
        name: Its one name.
        group: One of :data:`GROUPS`.
        words: What it does, for reports and ``--help``.
        fit: The fitting loops that optimise through it: ``"robust"`` (SALM's class tiles,
            :mod:`medue.protect.robust`) and/or ``"minmin"`` (EM's loop, :mod:`medue.protect.minmin`).
        attack: How the attacker suite applies it to release files: ``"purification"`` (to the images before
            training), ``"recipe"`` (an augmentation recipe while training), ``"training"`` (a way of training), or
            ``""`` (not an attack of its own).
        former_names: Names it had in result files written before this vocabulary.
    """

    name: str
    group: str
    words: str
    fit: tuple[str, ...] = ()
    attack: str = ""
    former_names: tuple[str, ...] = ()


#: Every habit, each named once (the order of :data:`FIT_HABITS` is the order SALM's fit draws from: keep it).
HABITS: dict[str, Habit] = {h.name: h for h in (
    Habit("none", "plain", "the images as released", fit=("robust",), attack="recipe"),
    Habit("augment", "augmentation", "random flips, rotation by up to 15 degrees, zoom by 0.9-1.1 and a shift of up "
          "to 1/8 of the side (bilinear): the geometry of MONAI's tutorial recipe", fit=("robust",)),
    Habit("half_resolution", "resampling", "area downsampling by 2, then bilinear back to the size (the suite's "
          "half-resolution attacks train at half size)", fit=("robust",)),
    Habit("blur", "purification", "Gaussian smoothing (the fit draws sigma from 0.5-1.5 px; the attack smooths at "
          "sigma 1 px, MONAI GaussianSmooth)", fit=("robust",), attack="purification",
          former_names=("gaussian_blur_1",)),
    Habit("median", "purification", "3x3 median filter", fit=("robust",), attack="purification",
          former_names=("median_3x3",)),
    Habit("bit_depth_3", "purification", "bit-depth reduction to 3 bits", fit=("robust",), attack="purification"),
    Habit("jpeg_q10", "purification", "JPEG at quality 10 (the fit: 8x8 block DCT with the standard luminance "
          "table, rounding straight-through)", fit=("robust",), attack="purification"),
    Habit("noise", "augmentation", "Gaussian noise (0.02 of the 0.5-99.5 percentile span in the robust fit; EM's "
          "noise_std in its loop)", fit=("robust", "minmin")),
    Habit("flip", "augmentation", "horizontal flip of half the batch", fit=("minmin",)),
    Habit("shift", "augmentation", "one random circular shift of up to 4 px (stands in for pad-and-crop)",
          fit=("minmin",)),
    Habit("smooth", "purification", "3x3 box blur on half the batches", fit=("minmin",)),
    Habit("flip_crop", "augmentation", "horizontal flip (p 0.5), reflect padding of 1/16 of the side, random crop "
          "back to the side", attack="recipe"),
    Habit("monai_tutorial", "augmentation", "MONAI's tutorial recipe: rotation +-15 degrees, flip, zoom 0.9-1.1, "
          "Gaussian smoothing, Gaussian noise, contrast", attack="recipe"),
    Habit("band_stop", "purification", "every spatial frequency between 2.5 and 6.5 cycles per side removed",
          attack="purification"),
    Habit("high_pass", "purification", "every spatial frequency below 6.5 cycles per side removed but the mean",
          attack="purification"),
    Habit("detrend", "purification", "per-image bias-field correction (division by a heavy Gaussian smoothing)",
          attack="purification"),
    Habit("grayscale", "purification", "grayscale conversion (the identity on single-channel images)",
          attack="purification"),
    Habit("adversarial_training", "training", "adversarial training (PGD) on the release", attack="training"),
)}

#: What SALM's fit draws from (its ``habits:`` parameter), in drawing order.
FIT_HABITS = tuple(h.name for h in HABITS.values() if "robust" in h.fit)
#: What EM's min-min loop optimises through (its ``augment:`` parameter).
MINMIN_AUGMENTATIONS = tuple(h.name for h in HABITS.values() if "minmin" in h.fit)
#: What an attack may apply to the release images before training.
PURIFICATIONS = tuple(h.name for h in HABITS.values() if h.attack == "purification")
#: The attacker suite's augmentation recipes.
RECIPES = tuple(h.name for h in HABITS.values() if h.attack == "recipe")
#: Former name -> name.
FORMER_NAMES = {old: h.name for h in HABITS.values() for old in h.former_names}


def seed_name(name: str) -> str:
    """The name an attack's training seed is derived from: the first former name where there is one, so that rows
    measured before the rename are reproduced by a re-run."""
    habit = HABITS.get(name)
    return habit.former_names[0] if habit is not None and habit.former_names else name


__all__ = [
    "EVERYDAY",
    "FIT_HABITS",
    "FORMER_NAMES",
    "GROUPS",
    "HABITS",
    "MINMIN_AUGMENTATIONS",
    "PURIFICATIONS",
    "RECIPES",
    "Habit",
    "seed_name",
]
