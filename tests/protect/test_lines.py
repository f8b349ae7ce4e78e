"""The release default (medue.protect.lines): a placed class pattern, and the parameters it does not read."""

import numpy as np
import torch

from medue.device import make_generator
from medue.protect import build_protector
from medue.protect.base import UnitSpace
from medue.testing import make_volume


def _fitted(**params):
    vol = make_volume((3, 24, 24), seed=2)
    x = torch.from_numpy(vol.array.astype(np.float32)).unsqueeze(1)
    p = build_protector("lines", **params)
    p.fit(x, torch.tensor([0, 1, 1]), UnitSpace.for_volume(vol), generator=make_generator(7), return_delta=False)
    return p, vol


def test_the_parameters_it_calls_inert_change_nothing_it_releases():
    base, vol = _fitted()
    inert = base.inert_params()
    assert {"step", "batch_size", "num_clusters", "block", "fine_tile", "augment", "lr", "inner_steps"} <= inert
    assert not {"epsilon", "tile", "duty", "mask_ratio", "placement", "blank_class"} & inert
    other, _ = _fitted(step=3, batch_size=4, num_clusters=5, block=2, fine_tile=4, augment=["smooth"], lr=0.5,
                       inner_steps=2, train_steps=1, stop_accuracy=0.5, surrogate="small", rho=3,
                       mask_update="step")
    assert other.state_fingerprint() == base.state_fingerprint()
    for label in (0, 1):
        ours, theirs = other.protect(vol, label=label, seed=1), base.protect(vol, label=label, seed=1)
        assert np.array_equal(ours.array, theirs.array)
    changed, _ = _fitted(tile=4)  # a parameter it reads
    assert not np.array_equal(changed.protect(vol, label=1, seed=1).array, base.protect(vol, label=1, seed=1).array)


def test_the_first_class_is_left_unchanged_and_the_others_get_bright_lines_within_the_budget():
    p, vol = _fitted()
    assert np.array_equal(p.protect(vol, label=0, seed=1).array, vol.array) and p.unchanged_label(0)
    delta = p.protect(vol, label=1, seed=1).array.astype(int) - vol.array.astype(int)
    assert delta.min() >= 0 and 0 < delta.max() <= 8 and (delta != 0).mean() <= 0.45
