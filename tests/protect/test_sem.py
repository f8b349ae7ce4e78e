"""Stable error-minimising noise (medue.protect.sem): EM's loop under random noise of radius rho."""

import pytest
import torch

from medue.device import make_generator
from medue.protect import UnitSpace, build_protector


def test_rho_defaults_to_half_the_budget_and_em_has_none():
    assert build_protector("sem", epsilon=8).params()["rho"] == 4
    assert build_protector("sem", epsilon=1).params()["rho"] == 1  # never 0: SEM without noise would be EM
    assert build_protector("em", epsilon=8).params()["rho"] == 0
    assert build_protector("sem", epsilon=8, rho=2).params()["rho"] == 2
    with pytest.raises(ValueError, match="rho must be"):
        build_protector("sem", rho=-1)


def test_the_random_noise_changes_the_fit_and_stays_within_the_budget():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 1, 12, 12), generator=g).float()
    y = torch.arange(8) % 2
    space = UnitSpace(0.0, 255.0, 0.0, 255.0)
    fast = {"epsilon": 4, "max_rounds": 1, "inner_steps": 3, "train_steps": 2}
    sem = build_protector("sem", **fast).fit(x, y, space, generator=make_generator(0))
    em = build_protector("em", **fast).fit(x, y, space, generator=make_generator(0))
    assert float(sem.abs().max()) <= 4 and torch.equal(sem, sem.round())
    assert not torch.equal(sem, em)
