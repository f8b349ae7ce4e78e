"""The augmentation recipes of the attacker suite (medue.efficacy.augment), built from MONAI transforms."""

import pytest

from medue.efficacy.augment import build_recipe
from medue.habits import RECIPES


def test_monai_recipes_are_seeded_and_change_images():
    import torch

    from medue.efficacy.augment import apply_recipe, build_recipe

    x = torch.rand(4, 1, 32, 32)
    outs = []
    for _ in range(2):
        recipe = build_recipe("monai_tutorial", 32)
        recipe.set_random_state(seed=3)
        outs.append(apply_recipe(recipe, x))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], x)
    assert outs[0].shape == x.shape and float(outs[0].min()) >= 0 and float(outs[0].max()) <= 1
    assert apply_recipe(build_recipe("none", 32), x) is x


def test_every_recipe_of_the_vocabulary_builds_and_an_unknown_one_is_named():
    assert [build_recipe(name, 16) is None for name in RECIPES] == [name == "none" for name in RECIPES]
    with pytest.raises(ValueError, match="unknown augmentation recipe 'cutmix'; expected one of none, flip_crop"):
        build_recipe("cutmix", 16)
