"""The attacker suite (medue.efficacy.suite): named attacks, grouped by habit, in the vocabulary of medue.habits."""

import pytest

from medue.device import derive_seed
from medue.habits import seed_name


def test_suites_name_every_everyday_habit():
    from medue.efficacy.suite import CATALOGUE, SUITES, suite_attacks

    full = {a.name: a for a in suite_attacks("full")}
    assert set(SUITES["quick"]) < set(SUITES["standard"]) < set(full)
    habits = {a.habit for a in full.values()}
    assert habits == {"plain", "augmentation", "resampling", "mixing", "training", "network", "purification"}
    assert {a.purification for a in full.values()} >= {"jpeg_q10", "bit_depth_3", "median", "blur",
                                                        "adversarial_training"}
    assert {a.scale for a in full.values()} == {0.5, 1.0, 2.0} and {a.clean_mix for a in full.values()} >= {0.1, 0.25}
    assert {a.architecture for a in full.values()} >= {"resnet18_full", "densenet121_full", "vit_small"}
    assert full["resnet18_monai_tutorial"].recipe == "monai_tutorial"
    assert full["resnet18_sgd_cosine_30"].epochs == 30 and full["resnet18_sgd_cosine_30"].optimizer == "sgd_cosine"
    with pytest.raises(KeyError, match="unknown attack"):
        suite_attacks(names=("resnet50",))
    assert list(CATALOGUE)[:2] == ["plain_cnn", "resnet18_flip_crop"]


def test_an_attack_renamed_into_the_vocabulary_trains_with_the_seed_of_its_committed_rows():
    from medue.efficacy.suite import CATALOGUE

    median = CATALOGUE["resnet18_median_3x3"]
    assert median.purification == "median" and median.record()["countermeasure"] == "median"
    # medue.efficacy.release derives the training seed from seed_name(purification)
    assert derive_seed(0, "resnet18", seed_name(median.purification)) == derive_seed(0, "resnet18", "median_3x3")
    blur = CATALOGUE["resnet18_gaussian_blur"]
    assert derive_seed(1, "resnet18", seed_name(blur.purification)) == derive_seed(1, "resnet18", "gaussian_blur_1")
