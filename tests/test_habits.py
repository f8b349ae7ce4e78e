"""The one vocabulary of habits (medue.habits): every name a fit or an attack uses is in it, once."""

import numpy as np
import pytest
import torch

from medue import habits
from medue.efficacy import countermeasures
from medue.efficacy.augment import build_recipe
from medue.efficacy.suite import CATALOGUE
from medue.protect import build_protector
from medue.protect.stand_ins import HABITS as STAND_INS, attacker_habit


def test_every_name_of_a_fit_or_an_attack_is_in_the_vocabulary_once():
    names = list(habits.HABITS)
    assert len(names) == len(set(names))
    assert not set(habits.FORMER_NAMES) & set(names)  # a former name never names another habit
    assert set(countermeasures.PREPROCESSING) == set(habits.PURIFICATIONS)
    for attack in CATALOGUE.values():
        assert attack.habit in habits.GROUPS
        assert attack.recipe in habits.RECIPES
        assert attack.purification == "none" or attack.purification in habits.HABITS
    for habit in habits.HABITS.values():
        assert habit.group in habits.GROUPS and habit.words
        assert set(habit.fit) <= {"robust", "minmin"} and habit.attack in ("", "purification", "recipe", "training")
        assert habit.fit or habit.attack, habit.name  # each is used by a fit, an attack or both


def test_the_fits_draw_from_the_vocabulary_in_their_order():
    # the drawing order is part of what a SALM fit does: it must not change
    assert STAND_INS == habits.FIT_HABITS == ("none", "augment", "half_resolution", "blur", "median", "bit_depth_3",
                                              "jpeg_q10", "noise")
    assert build_protector("salm").params()["habits"] == list(habits.FIT_HABITS)
    assert set(habits.MINMIN_AUGMENTATIONS) == {"flip", "shift", "smooth", "noise"}
    assert build_protector("lines").params()["augment"] == ["flip", "shift"]
    with pytest.raises(ValueError, match="augment must be a list drawn from"):
        build_protector("em", augment=["median"])  # a robust-fit habit that EM's loop does not implement
    with pytest.raises(ValueError, match="habits must be a non-empty list"):
        build_protector("salm", habits=["smooth"])
    x = torch.rand(2, 1, 16, 16)
    for name in habits.FIT_HABITS:
        out = attacker_habit(x, torch.Generator().manual_seed(0), habits=(name,))
        assert out.shape == x.shape


def test_former_names_name_their_habit_and_keep_their_training_seeds():
    assert habits.FORMER_NAMES == {"gaussian_blur_1": "blur", "median_3x3": "median"}
    # an attack's training seed is derived from the name its committed rows were measured under
    assert habits.seed_name("median") == "median_3x3" and habits.seed_name("blur") == "gaussian_blur_1"
    assert habits.seed_name("jpeg_q10") == "jpeg_q10" and habits.seed_name("none") == "none"


def test_a_shared_name_is_the_same_transformation_in_the_fit_and_the_attack():
    from medue.protect.stand_ins import median3

    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16)).astype(np.uint8)
    attacked = countermeasures.PREPROCESSING["median"](images)
    fitted = median3(torch.from_numpy(images.astype(np.float32))[:, None])[:, 0].numpy()
    inner = (slice(None), slice(1, -1), slice(1, -1))  # the borders are padded differently (reflect / mirror)
    assert np.array_equal(attacked[inner], fitted[inner].astype(np.uint8))
    assert [build_recipe(r, 16) is None for r in habits.RECIPES] == [True, False, False]
